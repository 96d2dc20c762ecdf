"""Progress bars are plain text (no ipywidgets, no TqdmWarning cell) and redraw sparsely outside a terminal."""
import io
import re
from pathlib import Path

from sgc.progress import NOTEBOOK_INTERVAL, tqdm

SGC = Path(__file__).resolve().parents[1] / "sgc"


def test_text_bar_with_sparse_redraws_off_a_terminal():
    out = io.StringIO()                                   # not a terminal, like a notebook's stderr
    with tqdm(total=1000, file=out, desc="classify", unit="img") as bar:
        assert bar.mininterval == NOTEBOOK_INTERVAL
        for _ in range(1000):
            bar.update(1)
    text = out.getvalue()
    assert "classify: 100%" in text and "1000/1000" in text
    assert text.count("\r") <= 3                          # start, (maybe one redraw), final state
    assert tqdm(total=1, file=out, mininterval=0.5).mininterval == 0.5   # an explicit value wins


def test_no_sgc_module_uses_the_widget_bar():
    offenders = []
    for path in SGC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"^\s*(from tqdm\.(auto|notebook|autonotebook) import|import tqdm\.(auto|notebook))", text, re.M):
            offenders.append(path.relative_to(SGC).as_posix())
    assert not offenders, f"use sgc.progress.tqdm instead of tqdm.auto in {sorted(offenders)}"
