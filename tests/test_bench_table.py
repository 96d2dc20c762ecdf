"""benchmarks/_table.py: the one table printer of the benchmarks."""
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from _table import Column, format_table  # noqa: E402

ROWS = [{"name": "reference", "s": 12.3456, "speedup": 1.0, "nfe": 812},
        {"name": "sgc, batched", "s": 1.5, "speedup": 8.2304, "nfe": None}]
COLS = [Column("name", "path"), Column("s", "seconds", ".2f"), Column("speedup", "speed-up", ".1f", suffix="x"),
        Column("nfe", "NFE", "d")]


def test_text_table_is_aligned():
    assert format_table(ROWS, COLS, title="t").splitlines() == [
        "t",
        "path          seconds  speed-up  NFE",
        "reference       12.35      1.0x  812",
        "sgc, batched     1.50      8.2x    -",   # a missing number, right-aligned
    ]


def test_markdown_table_and_function_columns():
    cols = COLS[:1] + [Column("", "note", lambda r: "slow" if r["s"] > 10 else "")]
    assert format_table(ROWS, cols, markdown=True).splitlines() == [
        "| path | note |", "| --- | --- |", "| reference | slow |", "| sgc, batched |  |"]
