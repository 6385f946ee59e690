"""Plain Markdown tables, which the book renders (via ``IPython.display.Markdown``)."""

from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: strings as given, ints with thousands separators, tuples as AxBxC."""
    rows = [[_cell(value) for value in row] for row in rows]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"rows[{i}] has {len(row)} cells, the header has {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, tuple):
        return "×".join(str(v) for v in value)
    return "" if value is None else str(value).replace("|", "\\|")


def paper_shape(shape: Sequence[int]) -> str:
    """A C x H x W shape written as the paper's tables write it: ``'112²×32'`` (H = W) or
    ``'112×96×32'``; a 1-D shape is just its length."""
    if len(shape) == 1:
        return str(shape[0])
    if len(shape) != 3:
        raise ValueError(f"shape must be (C,) or (C, H, W), got {tuple(shape)}")
    c, h, w = shape
    return f"{h}²×{c}" if h == w else f"{h}×{w}×{c}"
