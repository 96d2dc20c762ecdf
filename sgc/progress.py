"""Progress bars: plain-text tqdm in a terminal, in Jupyter and in papermill-rendered notebooks.

``tqdm.auto`` picks the ipywidgets bar inside Jupyter; in a papermill run that bar is saved as a
widget reference, which static renderers (GitHub, nbviewer without widget state) show as an
empty box or the initial "0%" text, and without ipywidgets it prints a ``TqdmWarning: IProgress
not found`` cell instead. The text bar (``tqdm.std``) renders the same everywhere: a stderr line
that Jupyter redraws in place. Outside a terminal each redraw is a separate output in the saved
notebook, so the default refresh there is every ``NOTEBOOK_INTERVAL`` seconds rather than 0.1 s.

Use ``from sgc.progress import tqdm`` wherever the package shows progress.
"""
from __future__ import annotations

import sys

from tqdm.std import tqdm as _text_tqdm

__all__ = ["tqdm", "NOTEBOOK_INTERVAL"]

NOTEBOOK_INTERVAL = 2.0  # seconds between redraws when stderr is not a terminal (notebooks, logs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class tqdm(_text_tqdm):  # noqa: N801 - a drop-in for tqdm.tqdm
    """``tqdm.std.tqdm`` whose ``mininterval`` defaults to 0.1 s in a terminal, else NOTEBOOK_INTERVAL."""

    def __init__(self, *args, **kwargs):
        stream = kwargs.get("file") or sys.stderr
        kwargs.setdefault("mininterval", 0.1 if _is_terminal(stream) else NOTEBOOK_INTERVAL)
        super().__init__(*args, **kwargs)
