"""Tiny trained run folders shared by the predict / OOD / explain / export tests (trained once per session)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from sgc.pipeline import train_on_dataset

TINY_MLP = {"arch": "mlp", "hidden": 128, "blocks": 2, "emb_dim": 64}
TINY_TRAIN = {"steps": 300, "batch_size": 128, "lr": 0.002, "warmup": 50, "ema_decay": 0.99, "checkpoint_every": 300}


@lru_cache(maxsize=None)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sgc-tiny-runs-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@lru_cache(maxsize=None)
def digits_run() -> Path:
    """A digits run (val split 20 %) that classifies well above chance (~10 s on one core).
    Tests copy it (``copy_run``) before writing into it."""
    run = _root() / "digits"
    train_on_dataset("digits", run, data_options={"val_size": 0.2}, model=TINY_MLP, train=TINY_TRAIN, progress=False)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a shared run folder."""
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
