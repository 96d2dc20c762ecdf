"""Files sgc ships besides code: the numbered notebooks and their parameter files.

In a clone (or an editable install) they are the repository's top-level ``notebooks/`` and
``notebooks/params/``. A wheel (``pip install .``) carries the same files as package data
under ``sgc/notebooks/`` (pyproject.toml maps the top-level folder there), so ``sgc batch``
works outside a clone. :func:`notebooks_dir` finds whichever this ``sgc`` came with.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["notebooks_dir", "params_dir"]

_PACKAGE = Path(__file__).resolve().parent


def _has_notebooks(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("[0-9][0-9]_*.ipynb"))


def notebooks_dir() -> Path:
    """The folder of the numbered notebooks ``NN_*.ipynb``: the installed copy, else the clone's.

    Raises FileNotFoundError naming both places when neither holds them.
    """
    installed = _PACKAGE / "notebooks"       # a wheel: package data
    clone = _PACKAGE.parent / "notebooks"    # a clone or an editable install: the repository's folder
    for folder in (installed, clone):
        if _has_notebooks(folder):
            return folder
    raise FileNotFoundError(f"no numbered notebooks (NN_*.ipynb) in {installed} or {clone}; reinstall sgc "
                            "(pip install .) or run from a clone of the repository")


def params_dir() -> Path:
    """The folder of the parameter files ``<dataset>.yaml`` that go with :func:`notebooks_dir`."""
    return notebooks_dir() / "params"
