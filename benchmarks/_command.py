"""How a benchmark writes its own command line into a report: runnable from the repository root
and free of this machine's folders (the rule of the repository: no machine paths in reports).

    from _command import public_command, where     # benchmarks/ is on sys.path when a script runs
    command = public_command(argv, "benchmarks/recipe_sweep.py")
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

__all__ = ["REPO", "where", "public_command"]

REPO = Path(__file__).resolve().parents[1]


def where(path) -> str:
    """A path as written into reports: relative to the repository when inside it, else its last part."""
    path = Path(os.path.abspath(path))   # symbolic links kept as they are named
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def public_command(argv: list[str], script: str, dataset: str = "breastmnist") -> str:
    """``python <script> <argv>`` as written into reports: ``--data-root``'s value becomes
    ``<folder with <dataset>.npz>`` (a data folder is a machine's; without the option ``sgc``
    finds the data by its data-root rule, ``$SGC_DATA/<source>`` or the default), and every other
    absolute path is written by :func:`where` (relative to the repository, else its last part)."""
    out, argv = [], list(argv)
    placeholder = f"<folder with {dataset}.npz>"
    value_next = False
    for i, token in enumerate(argv):
        if value_next:
            value_next = False
            out.append(placeholder)
        elif token == "--data-root":
            out.append(token)
            value_next = i + 1 < len(argv)
        elif token.startswith("--data-root="):
            out.append(f"--data-root={placeholder}")
        elif os.path.isabs(token):
            out.append(where(token))
        else:
            out.append(token)
    return f"python {script} " + shlex.join(out)
