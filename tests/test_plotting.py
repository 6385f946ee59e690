import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mbv2 import plotting  # noqa: E402


def test_book_style_sets_an_opaque_background_and_legible_fonts():
    matplotlib.rcdefaults()
    plotting.book_style()
    assert matplotlib.rcParams["figure.facecolor"] == "white"
    assert matplotlib.rcParams["savefig.facecolor"] == "white"
    assert min(matplotlib.rcParams[k] for k in ("font.size", "xtick.labelsize", "legend.fontsize")) >= 9
    matplotlib.rcdefaults()

