"""A built wheel carries the notebooks and their parameters; installed outside a clone, sgc finds them.

The wheel is built from a copy of the tracked sources (the build writes into its source folder)
with the current environment's setuptools, and installed with --no-deps into a new venv that
sees this environment's site-packages through a .pth line, so no package is downloaded.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMS = sorted(p.name for p in (REPO / "notebooks" / "params").glob("*.yaml"))
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "sgc", "notebooks"]


def _run(cmd, **kwargs):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        elif path.exists():
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src])
    (found,) = dist.glob("sgc-*.whl")
    return found


def test_wheel_contains_the_notebooks_and_params(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert NOTEBOOKS and PARAMS
    for nb in NOTEBOOKS:
        assert f"sgc/notebooks/{nb}" in names, nb
        assert f"sgc/notebooks/{nb[:-6]}.py" in names, nb          # the jupytext pair, to read
    for params in PARAMS:
        assert f"sgc/notebooks/params/{params}" in names, params
    assert "sgc/resources.py" in names and "sgc/config.py" in names
    assert not any("nbval_sanitize" in n or "/tests/" in n or n.startswith("reports/") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", env])
    target = Path(_run([env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                  .stdout.strip())
    # the dependencies come from this environment; its .pth files (the editable sgc) are not read
    (target / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "--no-deps", "--no-index",
          "-q", wheel])
    return env


def test_installed_sgc_finds_its_packaged_notebooks(venv, tmp_path):
    code = ("import sgc, sgc.resources as r; print(sgc.__file__); print(r.notebooks_dir()); "
            "print(sorted(p.name for p in r.params_dir().glob('*.yaml')))")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path).stdout.splitlines()
    assert str(venv) in out[0] and str(REPO) not in out[0]           # the wheel's sgc, not this clone
    assert out[1].startswith(str(venv)) and out[1].endswith("sgc/notebooks")
    assert out[2] == str(PARAMS)


@pytest.mark.slow
def test_installed_sgc_batch_runs_from_another_folder(venv, tmp_path):
    """The must-show: pip install . into a new venv, then sgc batch from a folder that is not the clone."""
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    for name in ("SGC_RUN_DIR", "SGC_DATA"):
        env.pop(name, None)
    done = _run([venv / "bin" / "sgc", "batch", "--dataset", "digits", "--notebooks", "01"], cwd=tmp_path, env=env,
                timeout=600)
    executed = tmp_path / "runs" / "digits" / "01_data_exploration.ipynb"
    assert executed.exists() and "01_data_exploration: done" in done.stdout
    text = executed.read_text()
    assert str(tmp_path) not in text and str(venv) not in text and str(REPO) not in text   # paths travel
    assert "IProgress not found" not in text                                               # no warning cell
    state = json.loads((tmp_path / "runs" / "digits" / "batch.json").read_text())
    assert state["notebooks"]["01_data_exploration"]["parameters"]["run_dir"] == "runs/digits"


def test_in_a_clone_the_repository_notebooks_are_used():
    from sgc.resources import notebooks_dir, params_dir
    assert notebooks_dir() == REPO / "notebooks" and params_dir() == REPO / "notebooks" / "params"
