import contextlib
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def one_thread():
    """torch on one thread for the block: worker processes run so (torchrun sets OMP_NUM_THREADS=1),
    so float sums agree with theirs; tiny models are also fastest on one thread of a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def shared_data() -> Path | None:
    """The real data folder: $SGC_TEST_DATA, else $SGC_DATA (the same layout, one folder per source),
    else the team's ../shared/data; None when none exists."""
    given = os.environ.get("SGC_TEST_DATA") or os.environ.get("SGC_DATA")
    root = Path(given) if given else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture
def shared_data_dir():
    root = shared_data()
    if root is None:
        pytest.skip("real test data not found: set SGC_TEST_DATA (or SGC_DATA) to the folder holding medmnist/, mini-mias/, cbis-ddsm/")
    return root


# --- a fresh run folder for every test session -------------------------------------------
# The notebooks (run by nbval in `make test`, which collects tests/ and notebooks/ together, so
# this file is loaded) put their run folder at $SGC_RUN_DIR/<dataset> (sgc.batch.default_run_dir).
# Without this, every session would reuse <tmp>/sgc-notebooks and could read a model, scores or
# tables that older code left there. Set before any kernel starts (kernels inherit the
# environment) and removed at the end; a SGC_RUN_DIR set by the caller is kept, with the
# session's folder made inside it. (Not a notebooks/conftest.py: a second top-level `conftest`
# module would shadow this one for tests that import from it.)
_session_run_dirs = []


def pytest_configure(config):
    import tempfile
    base = os.environ.get("SGC_RUN_DIR")
    if base:
        # `make test` names runs/notebooks, which a fresh clone does not have yet
        os.makedirs(base, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="sgc-test-session-", dir=base or None)
    os.environ["SGC_RUN_DIR"] = folder
    _session_run_dirs.append((folder, base))


def pytest_unconfigure(config):
    import shutil
    while _session_run_dirs:
        folder, base = _session_run_dirs.pop()
        if base is None:
            shutil.rmtree(folder, ignore_errors=True)
            os.environ.pop("SGC_RUN_DIR", None)
        else:
            os.environ["SGC_RUN_DIR"] = base
