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

__all__ = ["tqdm", "NOTEBOOK_INTERVAL", "SolveProgress"]

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


class SolveProgress:
    """Moves ``bar`` along while one batched probability-flow ODE solve of ``images`` images runs.

    The solve integrates time forward from about 0 to ``t_end``; a forward pre-hook on ``model``
    reads the time of each network evaluation (at most every ``every`` seconds) and advances the
    bar by the share of the images that corresponds to the time covered, so a long solve shows
    movement instead of a jump from 0 to 100 %. ``finish()`` adds what is left. With
    ``enabled=False`` (no bar, a compiled or graphed network) nothing is hooked.
    """

    def __init__(self,
                 bar,                  # a tqdm counting images
                 model,                # the torch module the solver evaluates as model(x, t, y)
                 images: int,          # images of this solve
                 t_end: float,         # the SDE's end time T
                 enabled: bool = True,
                 every: float = 0.5):  # seconds between reads of the time (each read may sync a GPU)
        import time
        self.bar, self.images, self.t_end, self.every = bar, images, float(t_end), every
        self.done, self.t0, self.last, self._clock = 0, None, 0.0, time.monotonic
        self.handle = model.register_forward_pre_hook(self._hook) if enabled else None

    def _hook(self, module, args):
        now = self._clock()
        if len(args) < 2 or now - self.last < self.every and self.t0 is not None:
            return
        self.last = now
        t = float(args[1].max()) if hasattr(args[1], "max") else float(args[1])
        if self.t0 is None:
            self.t0 = t
            return
        share = (t - self.t0) / max(self.t_end - self.t0, 1e-12)
        target = int(min(max(share, 0.0), 1.0) * self.images)
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target

    def finish(self) -> None:
        """Remove the hook and count the images not yet counted."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.images > self.done:
            self.bar.update(self.images - self.done)
            self.done = self.images

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
