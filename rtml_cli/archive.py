"""`rtml archive`: a Kafka log copied into the Parquet log (history for DuckDB, polars and
`rtml backtest`), or the other way (a backfill).

Rows keep their offsets: the copy of symbol S goes on after the newest offset the destination
has, in batches each published atomically, so an archive killed at any moment resumes where it
stopped, and a row is never copied twice. Before it goes on, the destination's newest row is
compared with the source's row at that offset: a destination that is not a copy of this
source (another broker, a rebuilt log) is an error, not a silent mix of two histories.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from threading import Event
from typing import Any

from rtml_cli.errors import LogError
from rtml_cli.log import OFFSET

CHUNK_ROWS = 500_000


@dataclass
class Copied:
    log: str
    symbol: str
    rows: int
    last_offset: int


def copy_log(
    src: Any, dst: Any, symbols: list[str] | None = None, stop: Event | None = None, chunk: int = CHUNK_ROWS
) -> Iterator[Copied]:
    """Copy what `dst` lacks of `src` (both logs of the same name), a batch at a time."""
    src.sync()
    with dst.writer() as writer:
        for sym in src.partitions():
            if symbols is not None and sym not in symbols:
                continue
            have = dst.last_offset(sym)
            end = src.last_offset(sym)
            if have > end:
                raise LogError(
                    f"{dst.location} has {sym!r} up to offset {have}, {src.location} only up to {end}: "
                    "it is not a copy of it (another source, or the source was rebuilt)"
                )
            if have >= 0 and src.first_offset(sym) <= have:  # else retention removed it: nothing to compare
                _check_same_row(src, dst, sym, have)
            while have < end and not (stop is not None and stop.is_set()):
                rows = src.read_after(sym, have, upto=have + chunk)
                if rows.height == 0 or int(rows[OFFSET][0]) != have + 1:
                    raise LogError(
                        f"{src.location} no longer has offset {have + 1} of {sym!r} (its retention removed it "
                        "before it was archived); the archive cannot go on without a gap"
                    )
                first, last = writer.append(sym, rows.drop(OFFSET))
                if first != have + 1:  # the writer numbers on from what the destination has
                    raise LogError(f"{dst.location}: {sym!r} was written to while archiving; stop the other writer")
                have = last
                src.release(sym, last)  # copied: neither side reads these rows again
                dst.release(sym, last)
                yield Copied(src.name, sym, rows.height, last)


def _check_same_row(src: Any, dst: Any, sym: str, offset: int) -> None:
    a = src.read_after(sym, offset - 1, upto=offset)
    b = dst.read_after(sym, offset - 1, upto=offset)
    common = [c for c in a.columns if c in b.columns]
    if a.height != 1 or b.height != 1 or not a.select(common).equals(b.select(common)):
        raise LogError(
            f"{dst.location} is not a copy of {src.location}: their rows of {sym!r} at offset {offset} differ "
            "(another source, or the source was rebuilt); archive into another directory"
        )
