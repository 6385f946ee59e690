"""The bibliography's labels in the same author-year form as the citations in the text.

sphinxcontrib-bibtex writes citations in the text as "Sandler et al., 2018" but labels the
list with pybtex's alpha labels ("SHZ+18") unless told otherwise; this extension registers
a pybtex style whose labels read like the citations and whose list is sorted by author,
year and title. Works by the same author in the same year carry a letter in their ``year``
field (2025a, 2025b), so text and list agree on it.
"""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

NAME = "authoryear"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield f"{_authors(entry)}, {entry.fields.get('year', 'n.d.')}"


def _authors(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    if not people:
        return entry.fields.get("title", entry.key)
    names = [" ".join(person.last_names).replace("{", "").replace("}", "") for person in people]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} et al."


class AuthorYearStyle(UnsrtStyle):
    default_label_style = NAME
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", NAME, AuthorYearLabels)
    register_plugin("pybtex.style.formatting", NAME, AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
