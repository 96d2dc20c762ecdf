"""No tracked file holds an absolute path of the machine that made it (the repo stands alone).

Looked for: this machine's repository parent, temp folder and home (as prefixes ending in a
separator), and the usual per-machine roots (/work/, /home/<user>/, /Users/<user>/, /root/), which
catch paths written on another machine than the one running the test.
"""
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO

SELF = "tests/test_repo_paths.py"   # spells out the patterns and their examples
# (file, text) pairs that look like machine paths but are examples for the reader
ALLOWED = set()  # (file, path prefix) pairs that may stay

# Files that may hold a machine path, each with the reason. None today: the writers record paths
# relative to the repository or the run folder (sgc batch, pipeline, experiments, benchmarks/cache.py),
# and the committed reports were regenerated (reports/runs/digits) or rewritten (the rest).
KNOWN: dict[str, str] = {}

def _prefixes() -> list[str]:
    here = [str(REPO.parent), tempfile.gettempdir(), str(Path.home())]
    out = {p.rstrip("/\\") + os.sep for p in here if len(p.strip("/\\")) > 1}  # never "/" alone
    return sorted(out | {"/work/", "/root/"})


PATTERN = re.compile("|".join([*(re.escape(p) + r"[^\s\"'<>]+" for p in _prefixes()),
                               r"/home/[A-Za-z0-9_.\-]+/[^\s\"'<>]*", r"/Users/[A-Za-z0-9_.\-]+/[^\s\"'<>]*",
                               r"[A-Z]:\\\\?Users\\\\?[^\s\"'<>]*"]).encode())


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed): no list of tracked files")
    return [name for name in out.decode().split("\0") if name]


def offenders() -> dict[str, list[str]]:
    found = {}
    for name in tracked_files():
        path = REPO / name
        if not path.is_file() or name == SELF:
            continue
        hits = sorted({m.decode(errors="replace") for m in PATTERN.findall(path.read_bytes())})
        hits = [h for h in hits if not any(name == f and h.startswith(a) for f, a in ALLOWED)]
        if hits:
            found[name] = hits
    return found


def test_the_pattern_finds_machine_paths_and_spares_examples():
    assert PATTERN.search(b'"run_dir": "/work/main/reports/runs/digits"')
    assert PATTERN.search(f"{tempfile.gettempdir()}/sgc-notebooks/digits".encode())
    assert PATTERN.search(b"/home/alice/data/x.npz") and PATTERN.search(b"C:\\\\Users\\\\bob\\\\sgc")
    assert not PATTERN.search(b"--data-root /data/vindr") and not PATTERN.search(b"~/.medmnist")
    assert not PATTERN.search(b"../shared/data") and not PATTERN.search(b"reports/runs/digits")


def test_no_tracked_file_holds_a_machine_path():
    found = {k: v for k, v in offenders().items() if k not in KNOWN}
    assert not found, f"{len(found)} files: " + "; ".join(f"{k}: {v[0]}" for k, v in sorted(found.items()))


def test_the_known_exceptions_still_need_their_place():
    stale = sorted(set(KNOWN) - set(offenders()))
    assert not stale, f"no longer hold a machine path: remove them from KNOWN: {stale}"
