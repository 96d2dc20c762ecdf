"""The benchmarks' one table printer: rows of dicts -> an aligned text table or a Markdown table.

    from _table import Column, print_table        # benchmarks/ is on sys.path when a script runs
    print_table(rows, [Column("estimator", "estimator"), Column("images_per_s", "img/s", ".2f"),
                       Column("speedup", "speed-up", ".1f", suffix="x")], title="classify, 360 images")

A value that is missing or None prints as "-"; ``fmt`` is a format spec (".3f", ".3g", "d") or a
function of the row returning text. Numbers are right-aligned, text left-aligned.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

__all__ = ["Column", "format_table", "print_table"]


@dataclass
class Column:
    key: str                          # the row's key (ignored when fmt is a function)
    header: str                       # the column's title
    fmt: str | Callable = ""          # format spec, or row -> text
    suffix: str = ""                  # appended to formatted values, e.g. "x" or " s"
    align: str = "auto"               # "left", "right", or "auto": right when the column holds numbers


def _cell(row: dict, col: Column) -> tuple[str, bool]:
    """(text, is a number) of one cell."""
    if callable(col.fmt):
        return str(col.fmt(row)), False
    value = row.get(col.key)
    if value is None:
        return "-", False
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return format(value, col.fmt) + col.suffix, numeric


def format_table(rows: list[dict], columns: list[Column], *, title: str | None = None,
                 markdown: bool = False) -> str:
    """The table as text: ``markdown`` gives ``| a | b |`` rows, else space-aligned columns."""
    cells = [[_cell(row, col) for col in columns] for row in rows]
    lines = [title, ""] if title and markdown else ([title] if title else [])
    if markdown:
        lines.append("| " + " | ".join(c.header for c in columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        lines += ["| " + " | ".join(text for text, _ in row) + " |" for row in cells]
        return "\n".join(lines)
    numeric = [c.align == "right" or (c.align == "auto" and any(row[i][1] for row in cells))
               for i, c in enumerate(columns)]
    widths = [max([len(c.header)] + [len(row[i][0]) for row in cells]) for i, c in enumerate(columns)]

    def line(texts):
        return "  ".join(t.rjust(w) if num else t.ljust(w) for t, w, num in zip(texts, widths, numeric)).rstrip()

    lines.append(line([c.header for c in columns]))
    lines += [line([text for text, _ in row]) for row in cells]
    return "\n".join(lines)


def print_table(rows: list[dict], columns: list[Column], *, title: str | None = None, markdown: bool = False,
                file=None) -> str:
    """Print :func:`format_table` (to stdout by default) and return the text."""
    text = format_table(rows, columns, title=title, markdown=markdown)
    print(text, file=file or sys.stdout, flush=True)
    return text
