"""Notebook hygiene: every chapter is in the table of contents, stored without outputs."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def toc_files():
    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"], *walk(toc)]


def test_there_are_notebooks():
    assert NOTEBOOKS


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    listed = set(toc_files())
    chapters = {p.relative_to(ROOT).with_suffix("").as_posix()
                for p in (ROOT / "chapters").iterdir() if p.suffix in (".ipynb", ".md")}
    assert chapters <= listed, f"not in _toc.yml: {sorted(chapters - listed)}"
    for entry in listed:
        assert any((ROOT / entry).with_suffix(s).exists() for s in (".ipynb", ".md")), entry


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(notebook["cells"]):
        assert not cell.get("outputs"), f"cell {index} of {path.name} has outputs"
        assert cell.get("execution_count") is None, f"cell {index} of {path.name} has an execution count"


GLUE_CALLS = ("glue(", "glue_values(", "glue_figure(", "glue_markdown(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_that_glues_hides_its_output_in_the_book(path):
    """A gluing cell shows its results in Jupyter (see mbv2.book); the book places them
    in the text instead, so the cell's own output is removed there."""
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] != "code":
            continue
        assert "myst_nb" not in source, (
            f"cell {index} of {path.name} uses myst_nb directly; glue with mbv2.book, which also "
            "shows the result in Jupyter")
        if not any(call in source for call in GLUE_CALLS):
            continue
        assert "remove-output" in cell["metadata"].get("tags", []), (
            f"cell {index} of {path.name} glues but is not tagged remove-output")
