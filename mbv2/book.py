"""What a chapter computes and shows in its text: numbers, tables and figures.

The book places computed results with MyST-NB's glue: numbers with the ``{glue:text}``
role, tables with ``{glue:md}`` and figures with ``{glue:figure}``, each with its caption.
jupyter-book fills these in; a notebook opened in Jupyter or Colab shows the roles and
directives as they are written. So every function here also *shows* what it glues, under
the cell that computed it: values printed one per line, the table, the figure. The
chapters tag every cell that glues ``remove-output`` (a test checks it): the rendered
page shows each result once, where the text places it, and the notebook shows it too.
"""

from __future__ import annotations

import numbers


def glue_values(**values: object) -> None:
    """Glue each keyword's value under its name (not displayed) and print ``name = value``.

    Integers are printed with thousands separators and other reals to 4 significant
    digits; numpy scalars are converted to Python numbers first, so that format specs in
    the text (``:,``, ``.1f``, ``.0%``) apply to them as to Python numbers.
    """
    from myst_nb import glue

    if not values:
        raise ValueError("glue_values needs at least one name=value pair")
    for name, value in values.items():
        value = _plain(value)
        glue(name, value, display=False)
        print(f"{name} = {_shown(value)}")


def _plain(value: object) -> object:
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()  # a numpy or torch scalar
    return value


def _shown(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    return f"{value:.4g}"


def glue_markdown(name: str, text: str) -> None:
    """Glue Markdown ``text`` (a table from :func:`mbv2.markdown_table`, say) and show it.

    Place it with ``{glue:md}`` and ``:format: myst``, inside a ``{table}`` directive that
    gives the caption and the ``:name:``.
    """
    from IPython.display import Markdown
    from myst_nb import glue

    if not isinstance(text, str):
        raise TypeError(f"text must be a Markdown string, got {type(text).__name__}")
    glue(name, Markdown(text), display=True)


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` directive, show it once, close it.

    Closing keeps Jupyter from drawing the figure a second time at the end of the cell. The
    caption, the alt text and the label for ``{numref}`` go in the Markdown cell that
    places the figure::

        ```{glue:figure} name
        :name: fig-name
        :alt: What the figure shows, for a reader who cannot see it.

        The caption.
        ```
    """
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=True)
    plt.close(fig)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def scientific(value: float, digits: int = 1) -> str:
    """A number in scientific notation for the text, as ``2.6×10⁻¹⁹`` (no line break
    inside, no ``e``): ``digits`` digits after the point."""
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}×10{str(int(exponent)).translate(_SUPERSCRIPT)}"
