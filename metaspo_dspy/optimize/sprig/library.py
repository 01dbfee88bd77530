"""SPRIG's library of prompt components: the built-in one, and CSV files in SPRIG's published format.

A component is one short instruction (usually a sentence) with a category. A system prompt in
SPRIG's search is an ordered list of components joined by single spaces.

The built-in library (``components.csv`` beside this module, shipped in the wheel) is written
by this project, not taken from SPRIG's corpus: 172 components in the 8 categories of the issue --
``role``, ``good_property``, ``style``, ``emotion``, ``scenario``, ``cot`` (step-by-step
reasoning), ``behavioral`` and ``safety``. SPRIG's ``jailbreak`` category (instructions that try
to lift a model's safety behaviour) is deliberately left out; a CSV of your own may have any
categories, that one included.

CSV format (as SPRIG published its corpus): a header row with a ``Prompt`` column and a category
column spelled ``Category`` or ``Catagory`` (SPRIG's own spelling); other columns (``Comments``)
are ignored. UTF-8, a leading BOM accepted. :func:`load_components` refuses a file it cannot use
with one :class:`ComponentLibraryError` naming the file, the row and the fix.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.store.hashing import sha256_hex
from metaspo_dspy.store.io import read_named_file

#: The built-in library, shipped as package data.
BUILTIN_PATH = Path(__file__).with_name("components.csv")
#: Spellings of the category column accepted in a CSV (SPRIG's file says ``Catagory``).
CATEGORY_COLUMNS = ("Category", "Catagory")


class ComponentLibraryError(ConfigError):
    """A component library cannot be used; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class Component:
    """One library entry: its text and category."""

    text: str
    category: str


@dataclass(frozen=True)
class ComponentLibrary:
    """An ordered, duplicate-free list of components and where it came from (``source``: the CSV
    path, or ``"built-in"``). Components are referred to by their index in :attr:`components`."""

    components: tuple[Component, ...]
    source: str

    def __post_init__(self) -> None:
        if not self.components:
            raise ComponentLibraryError(f"component library {self.source} has no components")

    def __len__(self) -> int:
        return len(self.components)

    def __getitem__(self, index: int) -> Component:
        return self.components[index]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.components]

    def categories(self) -> dict[str, int]:
        """Number of components per category, in first-seen order."""
        return dict(Counter(c.category for c in self.components))

    def digest(self) -> str:
        """A fingerprint of the texts and categories (recorded in a run's settings)."""
        text = "\n".join(f"{c.category}\t{c.text}" for c in self.components)
        return sha256_hex(text, length=16)

    def describe(self) -> dict[str, object]:
        """Plain data for the run artifact."""
        return {"source": self.source, "size": len(self), "digest": self.digest(), "categories": self.categories()}

    @classmethod
    def of(cls, items: Iterable[Component | tuple[str, str] | str], source: str = "given") -> ComponentLibrary:
        """A library from components, ``(text, category)`` pairs or bare texts (category
        ``"custom"``); blank texts are refused, repeated texts kept once (first wins)."""
        out: dict[str, Component] = {}
        for i, item in enumerate(items):
            if isinstance(item, Component):
                component = item
            elif isinstance(item, str):
                component = Component(item, "custom")
            else:
                text, category = item
                component = Component(text, category)
            text = " ".join(str(component.text).split())
            if not text:
                raise ComponentLibraryError(f"component {i} of {source} is empty; every component needs a text")
            out.setdefault(text, Component(text, str(component.category).strip() or "uncategorized"))
        return cls(tuple(out.values()), source)


def load_components(path: str | Path | None = None) -> ComponentLibrary:
    """The library in the CSV at ``path`` (SPRIG's format, see the module docstring), or the
    built-in one when ``path`` is None. Whitespace inside a component is folded to single spaces.

    Raises :class:`ComponentLibraryError` (a ``ConfigError``) for a missing or unreadable file,
    text that is not UTF-8, no header, no ``Prompt`` column, no category column, a row without a
    text or a category, or a file without components.
    """
    if path is None:
        return _read(BUILTIN_PATH, "built-in")
    return _read(Path(path), str(path))


def _read(path: Path, source: str) -> ComponentLibrary:
    raw = read_named_file(path, "component library", ComponentLibraryError, fix="; give a CSV file")
    try:
        rows = list(csv.reader(io.StringIO(raw)))
    except csv.Error as exc:
        raise ComponentLibraryError(f"component library {path} is not a readable CSV file: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ComponentLibraryError(f"component library {path} is empty; it needs a header row 'Prompt,Category'")
    header = [cell.strip() for cell in rows[0]]
    text_col = _column(header, ("Prompt",), path)
    category_col = _column(header, CATEGORY_COLUMNS, path)
    items = []
    for number, row in enumerate(rows[1:], start=2):
        text = row[text_col].strip() if text_col < len(row) else ""
        category = row[category_col].strip() if category_col < len(row) else ""
        if not text or not category:
            missing = "text (Prompt)" if not text else f"category ({header[category_col]})"
            raise ComponentLibraryError(
                f"component library {path}, line {number}: no {missing}; fill it in or remove the row"
            )
        items.append((text, category))
    if not items:
        raise ComponentLibraryError(f"component library {path} has a header but no components")
    return ComponentLibrary.of(items, source)


def _column(header: Sequence[str], names: Sequence[str], path: Path) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    spelled = " or ".join(repr(n) for n in names)
    raise ComponentLibraryError(
        f"component library {path} has no {spelled} column (its header is {list(header)}); SPRIG's format is a "
        "CSV with the columns Prompt and Category (or Catagory)"
    )
