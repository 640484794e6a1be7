"""Tick sources: each yields batches of parsed, not yet validated, trades.

A source is anything with `batches(stop) -> Iterator[TickBatch]`, `name`, and `total`
(the amount of work for a progress bar, or None when unbounded). Validation, de-duplication,
quarantine and writing live in `rtml_cli.ingest`, the same for every source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from threading import Event
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import polars as pl


@dataclass
class TickBatch:
    """Parsed trades in the tick columns, plus what quarantine needs for the bad ones.

    `frame` has the tick columns (typed; null where a value was missing or did not parse)
    and `_parse_problem` (the reason a field failed, else null). `raw` and `where` are
    expressions over `frame` giving the original record and its location; they are only
    evaluated for the rows that go to quarantine.
    """

    frame: pl.DataFrame
    raw: pl.Expr
    where: pl.Expr
    progress: int = 0  # units of `Source.total` consumed by this batch
    gaps: list[str] = field(default_factory=list)  # e.g. trade_id gaps seen by a live feed


class Source(Protocol):
    name: str
    total: int | None

    def batches(self, stop: Event) -> Iterator[TickBatch]: ...


def pace(
    batches: Iterator[TickBatch],
    speed: float,
    stop: Event,
    step: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] | None = None,
) -> Iterator[TickBatch]:
    """Release each trade when wall time reaches its exchange time, with the clock scaled by `speed`.

    The first trade sets the origin. Rows without a timestamp go out immediately (they are
    headed for quarantine anyway). `clock` and `wait` can be replaced in tests.
    """
    wait = wait or stop.wait
    origin_sim: int | None = None
    origin_wall = 0.0
    for batch in batches:
        frame = batch.frame
        ts_ns = frame["ts"].dt.epoch("ns")
        if origin_sim is None and ts_ns.drop_nulls().len():
            origin_sim = int(ts_ns.drop_nulls().min())
            origin_wall = clock()
        if origin_sim is None:
            yield batch
            continue
        due_wall = (ts_ns.fill_null(origin_sim) - origin_sim) / 1e9 / speed
        frame = frame.with_columns(_due=due_wall)
        sent = 0
        progress_left = batch.progress
        while sent < frame.height and not stop.is_set():
            elapsed = clock() - origin_wall
            # Rows are released in order of appearance, never reordered.
            n = _leading_true(frame["_due"].slice(sent) <= elapsed)
            if n:
                part = frame.slice(sent, n).drop("_due")
                sent += n
                share = batch.progress * n // frame.height if sent < frame.height else progress_left
                progress_left -= share
                yield TickBatch(part, batch.raw, batch.where, share, batch.gaps if sent == n else [])
            else:
                wait(min(max(float(frame["_due"][sent]) - elapsed, 0.0), step))


def _leading_true(mask: pl.Series) -> int:
    """Number of leading True values in a boolean series."""
    false_at = mask.arg_min()
    if false_at is None or mask[false_at]:
        return mask.len()
    return int(false_at)
