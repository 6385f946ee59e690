import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mbv2.book import glue_figure, glue_markdown, glue_values  # noqa: E402


def test_glue_values_prints_each_value_and_glues_python_numbers(capsys, monkeypatch):
    glued = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.update({name: (value, display)}))
    glue_values(count=3_504_872, share=np.float64(0.123456), loss=torch.tensor(2.5), name="stages.1.0")
    assert capsys.readouterr().out.splitlines() == [
        "count = 3,504,872", "share = 0.1235", "loss = 2.5", "name = stages.1.0"]
    assert glued["share"] == (0.123456, False) and type(glued["share"][0]) is float
    assert type(glued["loss"][0]) is float and glued["count"] == (3_504_872, False)


def test_glue_values_needs_a_value():
    with pytest.raises(ValueError, match="at least one name=value"):
        glue_values()


def test_glue_figure_shows_the_figure_once_and_closes_it(monkeypatch):
    import myst_nb

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.append((name, value, display)))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    glue_figure("a_figure", fig)
    assert glued == [("a_figure", fig, True)]
    assert not plt.fignum_exists(fig.number)


def test_glue_markdown_shows_the_table_and_rejects_non_text(monkeypatch):
    import myst_nb

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: glued.append((name, value.data, display)))
    glue_markdown("a_table", "| a |\n|---|\n| 1 |")
    assert glued == [("a_table", "| a |\n|---|\n| 1 |", True)]
    with pytest.raises(TypeError, match="text must be a Markdown string"):
        glue_markdown("a_table", 3)


def test_scientific_notation_for_the_text():
    from mbv2.book import scientific

    assert scientific(2.6e-19) == "2.6×10⁻¹⁹"
    assert scientific(9.68e17) == "9.7×10¹⁷"
    assert scientific(123456, digits=2) == "1.23×10⁵"
    assert scientific(0.5) == "5.0×10⁻¹"
