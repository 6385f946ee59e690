"""One figure style for the whole book.

Call :func:`book_style` once at the top of a chapter. Figures then

* have an opaque white background, so that black labels stay readable in the book's
  dark theme as well as in its light one;
* use font sizes that stay legible at the page's width (about 7.5 inches) and on a phone
  (no text smaller than 9 points at that width);
* are shown at twice the pixel density in Jupyter and in the built book ("retina"
  PNG), so that lines and text stay sharp on high-resolution screens.

matplotlib is imported when the function is called, not when ``mbv2`` is imported.
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


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` directive, and close it.

    Closing keeps Jupyter from showing the figure a second time, uncaptioned, below the
    cell that made it. The caption, the alt text and the label for ``{numref}`` go in the
    markdown cell that places the figure::

        ```{glue:figure} name
        :name: fig-name
        :alt: What the figure shows, for a reader who cannot see it.

        The caption.
        ```
    """
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)
