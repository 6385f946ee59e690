"""Plain Markdown tables, which the book renders (via ``IPython.display.Markdown``)."""

from __future__ import annotations

import re
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



def layer_summary(model, resolution: int = 224, *, depth: int = 3):
    """torchinfo's layer-by-layer table of ``model`` on one ``resolution``² RGB image.

    Returns torchinfo's ``ModelStatistics`` (``total_params``, ``total_mult_adds``, ...),
    with columns for the output size, the parameters and the multiply-adds of each layer,
    named by attribute (``stages``, ``expansion``, ...) down to ``depth`` levels of
    nesting. Printing it shows the table, with the multiply-add total labelled "millions"
    (torchinfo writes the enum name ``Units.MEGABYTES`` there on recent Pythons).
    """
    import torchinfo  # the independent counter the book checks its formulas against

    from ._checks import positive_int

    resolution = positive_int("resolution", resolution)

    class LayerSummary(torchinfo.ModelStatistics):
        def __str__(self) -> str:
            return _UNIT_LABEL.sub(lambda m: f"Total mult-adds ({_UNIT_WORDS[m.group(1)]})", super().__str__())

    stats = torchinfo.summary(
        model,
        input_size=(1, 3, resolution, resolution),
        depth=positive_int("depth", depth),
        col_names=("output_size", "num_params", "mult_adds"),
        row_settings=("var_names",),
        verbose=0,
    )
    stats.__class__ = LayerSummary
    return stats


_UNIT_LABEL = re.compile(r"Total mult-adds \((?:Units\.)?(KILOBYTES|MEGABYTES|GIGABYTES|TERABYTES)\)")
_UNIT_WORDS = {"KILOBYTES": "thousands", "MEGABYTES": "millions", "GIGABYTES": "billions", "TERABYTES": "trillions"}
