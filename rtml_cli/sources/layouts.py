"""The trade file layouts `rtml ingest --source replay` reads, and telling them apart.

A fixed layout (Kraken's, Binance's) is known by its header when the file has one, else by
its column count and what its first line holds in the columns rtml reads. The two layouts
named by their header (Tardis, rtml's own) need it. Every layout has a --format name; what a
file *looks like* is also what an error says when the file is not in the layout asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_INTEGER = re.compile(r"^\s*\d+\s*$")
_NUMBER = re.compile(r"^\s*-?\d+(\.\d*)?([eE][-+]?\d+)?\s*$")
_BOOL = ("true", "false")


def normalise(name: str) -> str:
    """A column name compared as headers are written: any case, snake_case or camelCase."""
    return name.strip().lower().replace("_", "")


def split_line(line: str, width: int | None = None) -> list[str]:
    """A line's fields; with `width`, empty fields past it (a trailing comma) dropped."""
    cells = [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]
    if width is not None and len(cells) > width and not any(cells[width:]):
        cells = cells[:width]
    return cells


@dataclass(frozen=True)
class Layout:
    """One layout: its --format name, what people call it, its columns as the parser names
    them (file order), the header lines its files may start with, and for a headerless first
    line what each column holds (i: an integer, n: a number, b: true/false, -: anything,
    as rtml does not read it)."""

    name: str
    title: str
    columns: tuple[str, ...]
    headers: tuple[tuple[str, ...], ...]
    kinds: str = ""

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def fixed(self) -> bool:
        """Whether the columns are known by position (else by the header's names)."""
        return bool(self.kinds)

    def is_header(self, cells: list[str]) -> bool:
        got = [normalise(c) for c in cells]
        return any(got == [normalise(h) for h in header] for header in self.headers)

    def fits(self, line: str) -> bool:
        """Whether a headerless line is a record of this layout (empty fields at its end, a
        trailing comma, are no fields)."""
        cells = split_line(line)
        while cells and not cells[-1]:
            cells.pop()
        return len(cells) == self.width and all(_holds(kind, c) for kind, c in zip(self.kinds, cells, strict=True))

    def shown(self) -> str:
        """'Binance spot trades (id,price,...)'."""
        return f"{self.title} ({','.join(self.headers[0])})"


def _holds(kind: str, cell: str) -> bool:
    if kind == "i":
        return bool(_INTEGER.match(cell))
    if kind == "n":
        return bool(_NUMBER.match(cell))
    if kind == "b":
        return cell.lower() in _BOOL
    return True


_KRAKEN = ("timestamp", "price", "volume")
KRAKEN = Layout("kraken", "a Kraken trades CSV", _KRAKEN, (_KRAKEN,), "nnn")
# Binance's columns are named alike in every layout below, so one parser reads them all.
BINANCE = Layout(
    "binance",
    "a Binance spot trades dump",
    ("id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"),
    (("id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"),),
    "inn-ib-",
)
BINANCE_FUTURES = Layout(
    "binance-futures",
    "a Binance USD-M or COIN-M futures trades dump",
    ("id", "price", "qty", "quoteQty", "time", "isBuyerMaker"),
    (
        ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),  # USD-M
        ("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),  # COIN-M
    ),
    "inn-ib",
)
_AGG = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker")
BINANCE_AGG = Layout(
    "binance-agg",
    "a Binance spot aggTrades dump",
    ("id", "price", "qty", "firstId", "lastId", "time", "isBuyerMaker", "isBestMatch"),
    ((*_AGG, "is_best_match"),),
    "inn--ib-",
)
BINANCE_FUTURES_AGG = Layout(
    "binance-futures-agg",
    "a Binance USD-M or COIN-M futures aggTrades dump",
    ("id", "price", "qty", "firstId", "lastId", "time", "isBuyerMaker"),
    (_AGG,),
    "inn--ib",
)
TARDIS = Layout(
    "tardis",
    "a Tardis trades CSV",
    ("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"),
    (("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"),),
)
RTML_REQUIRED = ("ts", "price", "qty")
RTML = Layout("rtml", "an rtml ticks export", RTML_REQUIRED, (RTML_REQUIRED,))

LAYOUTS = {lay.name: lay for lay in (KRAKEN, BINANCE, BINANCE_FUTURES, BINANCE_AGG, BINANCE_FUTURES_AGG, TARDIS, RTML)}
FORMATS = ("auto", *LAYOUTS)


def by_header(line: str) -> Layout | None:
    """The layout whose header a first line is, if it is one."""
    lowered = [c.lower() for c in split_line(line)]
    if lowered[: TARDIS.width] == list(TARDIS.columns):  # extra columns after Tardis's own are kept
        return TARDIS
    for lay in LAYOUTS.values():
        if lay.fixed and lay.is_header(split_line(line, lay.width)):
            return lay
    if all(c in lowered for c in RTML_REQUIRED):
        return RTML
    return None


def resembles(lines: list[str]) -> Layout | None:
    """The layout a file's first lines are in: the one whose header the first is, else the one
    most of them fit (so one odd first record does not decide), else the one the first fits.
    The headerless layouts differ in width or in a column's kind, so a record fits at most one."""
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return None
    header = by_header(lines[0])
    if header is not None:
        return header
    fixed = [lay for lay in LAYOUTS.values() if lay.fixed]
    best = max(fixed, key=lambda lay: sum(lay.fits(ln) for ln in lines))
    if sum(best.fits(ln) for ln in lines) * 2 > len(lines):
        return best
    return next((lay for lay in fixed if lay.fits(lines[0])), None)


def parquet_layout(names: list[str]) -> Layout | None:
    """The layout a Parquet file's column names are, if any: a Binance one when it has the
    columns rtml reads of it (any case, snake_case or camelCase)."""
    lowered = [n.lower() for n in names]
    if all(c in lowered for c in RTML_REQUIRED):
        return RTML
    got = {normalise(n) for n in names}
    for spot, futures in ((BINANCE, BINANCE_FUTURES), (BINANCE_AGG, BINANCE_FUTURES_AGG)):
        if any(set(_read(spot, header)) <= got for header in spot.headers):
            return spot if "isbestmatch" in got else futures
    if all(c in lowered for c in ("timestamp", "price", "amount", "side")):
        return TARDIS
    return None


def parquet_columns(names: list[str], lay: Layout) -> tuple[dict[str, str], list[str]]:
    """({name in the file: the parser's name}, the header names of the columns read that the
    file lacks) for a fixed layout's Parquet file."""
    wanted: dict[str, str] = {}
    for header in lay.headers:
        wanted |= {normalise(h): col for h, col in zip(header, lay.columns, strict=True)}
    rename = {n: wanted[normalise(n)] for n in names if normalise(n) in wanted}
    named = [rename.get(n, n) for n in names]  # every column's name once renamed
    twice = sorted(n for n in names if named.count(rename.get(n, n)) > 1)
    if twice:
        raise ValueError(f"the columns {', '.join(twice)} name the same field")
    got = {normalise(n) for n in names}
    missing = [h for h in _read(lay, lay.headers[0]) if h not in got]
    return rename, [h for h in lay.headers[0] if normalise(h) in missing]


def _read(lay: Layout, header: tuple[str, ...]) -> list[str]:
    """The normalised header names of the columns rtml reads."""
    return [normalise(h) for h, kind in zip(header, lay.kinds, strict=True) if kind != "-"]


def hint(looks: Layout | None, asked: str | None = None) -> str:
    """What to do about a file that is not in the layout asked for: the sentence an error ends with."""
    if looks is None or looks.name == asked:
        return "is this the right file, and the right --format?"
    return f"it looks like {looks.shown()}: pass --format {looks.name}, or --format auto"
