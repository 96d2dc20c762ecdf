"""`make demo` in a fresh clone leaves `git status --porcelain` empty (issue 13, 6).

The clone runs the Makefile's own `demo` target (same code path as a user's `make demo`), with
the test's virtual environment (no new install) and tiny training / evaluation sizes passed
through DEMO_ARGS. PYTHONPATH puts the clone's package first, so the code that runs and the
files it writes are the clone's. `.ci/run` checks the same for `make test` itself.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_in_a_fresh_clone_leaves_git_status_clean(tmp_path):
    if not shutil.which("git") or not shutil.which("make"):
        pytest.skip("git and make are needed to clone the repository and run its Makefile")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip(f"{REPO} is not a git checkout")
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not (venv / "bin" / "sgc").exists() or not stamp.exists():
        pytest.skip(f"{venv} is not a virtual environment made by `make venv` (no bin/sgc or .installed)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    t = stamp.stat().st_mtime - 60  # older than the stamp: make must not reinstall into this venv
    os.utime(clone / "pyproject.toml", (t, t))
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("SGC_RUN_DIR", None)
    which = subprocess.run([str(venv / "bin" / "python"), "-c", "import sgc; print(sgc.__file__)"], env=env,
                           cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(which).resolve().is_relative_to(clone.resolve()), which
    for _ in range(2):  # the second run reuses the model and the finished chunks
        r = subprocess.run(["make", "-C", str(clone), "demo", f"VENV={venv}", "DEMO_ARGS=--steps 30 --limit 24"],
                           env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--untracked-files=all"],
                                capture_output=True, text=True, check=True).stdout
        assert status == "", f"make demo left the tree dirty:\n{status}"
    assert "reusing the model in runs/digits" in r.stderr
    assert (clone / "runs" / "digits" / "checkpoint.pt").exists()
    assert list((clone / "runs" / "digits").glob("partial_metrics_test_ode_limit24*.json"))
