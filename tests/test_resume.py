"""Long runs: a killed training process resumes to the weights of an uninterrupted run;
damaged checkpoints are detected by their sha256 and skipped for the previous one."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import one_thread
from sgc.pipeline import train_on_dataset
from sgc.runs import find_checkpoint, load_checkpoint

MODEL = {"arch": "mlp", "hidden": 16, "blocks": 1, "emb_dim": 8}
TRAIN = {"steps": 400, "batch_size": 8, "warmup": 10, "log_every": 7, "checkpoint_every": 20, "hflip": True}
CLI = ["--arch", "mlp", "--model", "hidden=16", "blocks=1", "emb_dim=8", "--train", "steps=400", "batch_size=8",
       "warmup=10", "log_every=7", "checkpoint_every=20", "hflip=true"]



def _state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _assert_same_run(a, b):
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert [h["loss"] for h in json.loads(a["history"])] == [h["loss"] for h in json.loads(b["history"])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "ref"
    with one_thread():
        train_on_dataset("digits", run, model=MODEL, train=TRAIN, progress=False)
    return _state(run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_process_resumes_to_the_same_weights(uninterrupted, tmp_path, sig):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sgc", "train", "--run-dir", str(run), *CLI], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt.sha256").exists():  # the first checkpoint is complete
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    step = load_checkpoint(run)[1]["step"]
    assert 20 <= step < 400
    if sig == signal.SIGTERM:  # clean stop: checkpoint at the current step, exit 128 + 15
        assert proc.returncode == 143, err
        assert "stopped by SIGTERM" in err and "--resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    with one_thread():
        train_on_dataset("digits", run, model=MODEL, train=TRAIN, resume=True, progress=False)
    _assert_same_run(_state(run), uninterrupted)


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path, capfd):
    short = dict(TRAIN, steps=12, checkpoint_every=4, log_every=3)
    with one_thread():
        train_on_dataset("digits", tmp_path / "ref", model=MODEL, train=short, progress=False)
        run = tmp_path / "run"
        train_on_dataset("digits", run, model=MODEL, train=dict(short, steps=8), progress=False)
    # steps 4 and 8 on disk; the newest is half written (e.g. the node died during the write)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    assert find_checkpoint(run).name == "checkpoint.prev.pt"
    assert "skipping" in capfd.readouterr().err
    assert load_checkpoint(run)[1]["step"] == 4
    with one_thread():
        train_on_dataset("digits", run, model=MODEL, train=short, resume=True, progress=False)
    _assert_same_run(_state(run), _state(tmp_path / "ref"))

    # both damaged: resuming refuses instead of silently starting over
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        train_on_dataset("digits", run, model=MODEL, train=short, resume=True, progress=False)


def test_run_folder_records_provenance(tmp_path):
    with one_thread():
        train_on_dataset("digits", tmp_path, model=MODEL, train=dict(TRAIN, steps=2, seed=7), progress=False)
    prov = json.loads((tmp_path / "config.json").read_text())["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["numpy"]
    assert prov["seeds"]["seed"] == 7 and prov["world_size"] == 1
    assert "git_revision" in prov and "python" in prov
    lines = [line.split() for line in (tmp_path / "checkpoint.pt.sha256").read_text().splitlines()]
    assert [name for _, name in lines] == ["checkpoint.pt", "config.json"]  # sha256sum -c format
    assert all(len(digest) == 64 for digest, _ in lines)
    import hashlib
    assert lines[1][0] == hashlib.sha256((tmp_path / "config.json").read_bytes()).hexdigest()
    assert np.isfinite(json.loads((tmp_path / "history.json").read_text())[-1]["loss"])
