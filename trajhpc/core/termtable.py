"""Tables that fit the terminal: low-value columns dropped, long text folded, no column squeezed to nothing.

rich shrinks every column of a table wider than the console, down to zero width
(``┳┳┳`` with no header) or a header cut to ``d…``. :func:`fit_table` decides instead,
from the content, before rich lays anything out: columns whose cells are all blank go,
then the columns of lowest value until the rest fit, and only the columns that may fold
(free text: errors, details) get less than their natural width, never less than a
readable minimum. What was dropped for width is said in the caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

Cell = Union[str, Text]
BLANK = ("", "–", "-")


@dataclass(frozen=True, eq=False)
class Col:
    """One column: its header and cells, and how it gives way when the table is too wide.

    ``keep``: None for a column that is never dropped; otherwise columns with the lowest
    ``keep`` go first. ``fold``: free text that may wrap onto several lines (at least
    ``fold_min`` cells wide). ``blank_drops``: left out when every cell is blank.
    """

    header: str
    cells: Sequence[Cell]
    keep: int | None = None
    fold: bool = False
    fold_min: int = 16
    justify: str = "left"
    blank_drops: bool = False

    def _lines(self, cell: Cell) -> list[str]:
        return (cell.plain if isinstance(cell, Text) else str(cell)).splitlines() or [""]

    @property
    def natural(self) -> int:
        """The width that shows every cell and the header on one line each."""
        cells = [line for c in self.cells for line in self._lines(c)]
        return max(cell_len(line) for line in [*self.header.splitlines(), *cells] or [""])

    @property
    def minimum(self) -> int:
        """The least width it may get: its natural width, or for folding text ``fold_min``."""
        header = max((cell_len(line) for line in self.header.splitlines()), default=0)
        return min(self.natural, max(self.fold_min, header)) if self.fold else self.natural

    @property
    def blank(self) -> bool:
        return all(all(line.strip() in BLANK for line in self._lines(c)) for c in self.cells)


@dataclass(frozen=True)
class Style:
    """The frame of a table: how many cells each column and the table's edges cost."""

    compact: bool = False

    def overhead(self, n_columns: int) -> int:
        if n_columns == 0:
            return 0
        if self.compact:  # no edges, one space between columns
            return n_columns - 1
        return 3 * n_columns + 1  # a border and two padding cells per column, one more border

    def table(self, title: str | None, caption: str | None) -> Table:
        common = {"title": title, "caption": caption, "title_justify": "left", "caption_justify": "left"}
        if self.compact:
            return Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0), pad_edge=False, **common)
        return Table(**common)


def fit_widths(columns: Sequence[Col], width: int, style: Style = Style()) -> tuple[list[Col], list[int], list[Col]]:
    """(columns kept, their widths, columns dropped for width), the widths summing to at most ``width``
    with the frame when that is possible at all (only never-dropped columns left: their minimums)."""
    cols = [c for c in columns if not (c.blank_drops and c.blank)]
    dropped: list[Col] = []

    def need(cs: Sequence[Col]) -> int:
        return sum(c.minimum for c in cs) + style.overhead(len(cs))

    while need(cols) > width:
        candidates = [c for c in cols if c.keep is not None]
        if not candidates:
            break
        victim = min(candidates, key=lambda c: c.keep)  # the first of equals
        cols = [c for c in cols if c is not victim]
        dropped.append(victim)
    widths = [c.minimum for c in cols]
    spare = width - need(cols)
    for i, c in enumerate(cols):  # folding columns grow toward their natural width, left to right
        if c.fold and spare > 0:
            grow = min(spare, c.natural - widths[i])
            widths[i] += grow
            spare -= grow
    return cols, widths, [c for c in columns if any(c is d for d in dropped)]


def fit_table(
    columns: Sequence[Col], width: int, *, title: str | None = None, compact: bool = False, note_dropped: bool = True
) -> Table:
    """A rich table of ``columns`` no wider than ``width`` cells (see the module docstring)."""
    style = Style(compact)
    cols, widths, dropped = fit_widths(columns, width, style)
    caption = None
    if dropped and note_dropped:
        caption = f"not shown at {width} columns: {', '.join(c.header.replace(chr(10), ' ') for c in dropped)}"
    table = style.table(title, caption)
    for c, w in zip(cols, widths):
        table.add_column(
            c.header, justify=c.justify, width=w, no_wrap=not c.fold, overflow="fold" if c.fold else "ellipsis"
        )
    for i in range(len(columns[0].cells) if columns else 0):
        table.add_row(*(c.cells[i] for c in cols))
    return table
