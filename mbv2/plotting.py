"""One figure style for the whole book.

Call :func:`book_style` once at the top of a chapter. Figures then

* have an opaque white background, so that black labels stay readable in the book's
  dark theme as well as in its light one;
* use font sizes that stay legible at the page's width (about 7.5 inches) and on a phone
  (no text smaller than 9 points at that width);
* are shown at twice the pixel density in Jupyter and in the built book ("retina"
  PNG), so that lines and text stay sharp on high-resolution screens.

matplotlib is imported when the function is called, not when ``mbv2`` is imported.
Figures go into the text with :func:`mbv2.book.glue_figure`.
"""

from __future__ import annotations

#: The widest a figure should be, in inches: the width of the book's text column.
MAX_WIDTH = 7.5

_STYLE = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
    "figure.dpi": 100,
    "axes.grid": False,
    "image.cmap": "viridis",
}


def book_style() -> None:
    """Apply the book's figure style to matplotlib (and to inline figures in Jupyter)."""
    import matplotlib

    matplotlib.rcParams.update(_STYLE)
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # outside Jupyter there is nothing more to set
        return
    set_matplotlib_formats("retina")

