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
