"""The Makefile reinstalls torch when TORCH_SPEC changes (run against a fake python that logs its calls)."""
import os
import shutil
import stat
import subprocess

import pytest

from conftest import REPO

FAKE = """#!/bin/sh
echo "$*" >> "{log}"
"""


@pytest.fixture
def sandbox(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE.format(log=tmp_path / "log"))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def make(folder, *args) -> list[str]:
    """Run make in ``folder``; the fake python's calls made during this run."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC", "VENV", "PYTHON")}
    log = folder / "log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["make", "-s", *args], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    return log.read_text().splitlines() if log.exists() else []


def torch_calls(calls):
    return [c for c in calls if "torch" in c]


def test_a_changed_torch_spec_reinstalls_torch(sandbox):
    first = make(sandbox, "venv")
    assert torch_calls(first) == ["-m pip uninstall --quiet --yes torch", "-m pip install --quiet torch==2.13.0"]
    assert any("-e .[dev,notebooks]" in c for c in first)
    assert make(sandbox, "venv") == []                                   # same spec: nothing to do
    cuda = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    changed = make(sandbox, "venv", f"TORCH_SPEC={cuda}")
    assert torch_calls(changed) == ["-m pip uninstall --quiet --yes torch", f"-m pip install --quiet {cuda}"]
    assert (sandbox / ".venv" / ".torch-spec").read_text().strip() == cuda
    assert make(sandbox, "venv", f"TORCH_SPEC={cuda}") == []
    back = make(sandbox, "venv")                                         # back to the default: reinstalled
    assert torch_calls(back)[-1] == "-m pip install --quiet torch==2.13.0"


def test_a_venv_from_before_the_stamp_keeps_its_torch_unless_a_spec_is_given(sandbox):
    (sandbox / ".venv" / ".installed").touch()                           # made by the old Makefile
    (sandbox / "pyproject.toml").touch()
    os.utime(sandbox / ".venv" / ".installed", None)
    assert torch_calls(make(sandbox, "venv")) == []
    assert (sandbox / ".venv" / ".torch-spec").read_text().strip() == "torch==2.13.0"
    (sandbox / ".venv" / ".torch-spec").unlink()
    given = make(sandbox, "venv", "TORCH_SPEC=torch==2.12.0")
    assert torch_calls(given)[-1] == "-m pip install --quiet torch==2.12.0"


def test_a_failed_torch_install_stops_make(sandbox):
    python = sandbox / ".venv" / "bin" / "python"
    python.write_text(python.read_text() + 'case "$*" in *"install --quiet torch"*) exit 1;; esac\n')
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC")}
    done = subprocess.run(["make", "-s", "venv"], cwd=sandbox, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and not (sandbox / ".venv" / ".installed").exists()
