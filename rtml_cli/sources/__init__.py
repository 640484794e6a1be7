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
from typing import TYPE_CHECKING, Any, Protocol

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
    @property
    def name(self) -> str: ...

    @property
    def total(self) -> int | None: ...

    def batches(self, stop: Event) -> Iterator[TickBatch]: ...


# The live exchange feeds, by --source name: (module, class), imported only when used; their
# symbols' spelling and default, for the help.
LIVE = {
    "kraken": ("rtml_cli.sources.kraken", "KrakenSource"),
    "binance": ("rtml_cli.sources.binance", "BinanceSource"),
    "binance-futures": ("rtml_cli.sources.binance", "BinanceFuturesSource"),
    "coinbase": ("rtml_cli.sources.coinbase", "CoinbaseSource"),
}
SOURCES = ("synthetic", "replay", *LIVE)


def live_source(kind: str) -> type:
    """The class of a live feed (a `rtml_cli.sources.live.LiveSource`)."""
    import importlib

    module, cls = LIVE[kind]
    return getattr(importlib.import_module(module), cls)


def feed_state(source: Any) -> str | None:
    """What a live feed's connection is doing ("subscribed", "retrying in 2 s: ..."); None
    for the other sources."""
    return getattr(source, "state", None)


IDLE_BATCH_S = 0.25  # while pacing waits for a trade, an empty batch this often


def pace(
    batches: Iterator[TickBatch],
    speed: float,
    stop: Event,
    step: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] | None = None,
) -> Iterator[TickBatch]:
    """Release each trade when wall time reaches its exchange time, with the clock scaled by `speed`.

    The clock follows the trades' own time from the first plausible one, in order of
    appearance (never reordered). A trade that cannot set the pace goes out at once and
    leaves the clock where it was: no time, a time before 2000, or one more than
    MAX_JUMP_SECONDS from both of its neighbours (one trade stamped far off; these are
    headed for quarantine). To judge a batch's last trade the next batch's first is needed,
    so each batch's last trade goes out with the next batch. A pause of more than
    MAX_JUMP_SECONDS between plausible trades is skipped, not waited for. `clock` and `wait`
    can be replaced in tests.
    """
    import numpy as np
    import polars as pl

    from rtml_cli.schema import MAX_JUMP_SECONDS, MIN_TS_NS, isolated_in_time

    wait = wait or stop.wait
    jump = int(MAX_JUMP_SECONDS * 1e9)
    clock_state: dict[str, Any] = {}  # prev_ts, prev_c (file time with long pauses cut), origin_c, origin_wall
    held: TickBatch | None = None

    def dues(ts: np.ndarray, valid: np.ndarray, judge_last: bool) -> np.ndarray:
        """Wall seconds after the origin at which each trade is due (-inf: at once)."""
        due = np.full(ts.size, -np.inf)
        cand = np.flatnonzero(valid & (ts >= MIN_TS_NS))
        if cand.size == 0:
            return due
        t = ts[cand]
        odd = isolated_in_time(t, clock_state.get("prev_ts"), jump)
        if judge_last and "prev_ts" in clock_state and t[-1] - clock_state["prev_ts"] > jump:
            odd[-1] = True  # the very last trade, far after the rest: nothing after it to pace
        t, cand = t[~odd], cand[~odd]
        if not judge_last and cand.size and cand[-1] == ts.size - 1:
            t, cand = t[:-1], cand[:-1]  # the held trade: it told us about its neighbour; its turn comes later
        if t.size == 0:
            return due
        if "prev_ts" not in clock_state:
            clock_state.update(prev_ts=int(t[0]), prev_c=int(t[0]), origin_c=int(t[0]), origin_wall=clock())
        steps = np.diff(np.concatenate(([clock_state["prev_ts"]], t)))
        # a jump of more than MAX_JUMP_SECONDS (a long pause, or a run of trades stamped far
        # off) moves the clock by nothing, so it neither stalls nor ends the pacing
        c = clock_state["prev_c"] + np.cumsum(np.where(np.abs(steps) > jump, 0, steps))
        clock_state.update(prev_ts=int(t[-1]), prev_c=int(c[-1]))
        due[cand] = (c - clock_state["origin_c"]) / 1e9 / speed
        return due

    def release(part: TickBatch, due: np.ndarray) -> Iterator[TickBatch]:
        frame = part.frame.with_columns(_due=pl.Series(due))
        sent, progress_left = 0, part.progress
        idle_since = clock()
        while sent < frame.height and not stop.is_set():
            elapsed = clock() - clock_state.get("origin_wall", clock())
            n = _leading_true(frame["_due"].slice(sent) <= elapsed)
            if n:
                out = frame.slice(sent, n).drop("_due")
                sent += n
                share = part.progress * n // frame.height if sent < frame.height else progress_left
                progress_left -= share
                yield TickBatch(out, part.raw, part.where, share, part.gaps if sent == n else [])
                idle_since = clock()
            else:
                wait(min(max(float(frame["_due"][sent]) - elapsed, 0.0), step))
                if clock() - idle_since >= IDLE_BATCH_S:
                    # a pause in the trades: an empty batch lets ingest flush what it holds on
                    # time (else the features clock, running on, closes the bars of those ticks)
                    yield TickBatch(frame.head(0).drop("_due"), part.raw, part.where, 0, [])
                    idle_since = clock()

    def times(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        ts = frame["ts"].dt.epoch("ns")
        return ts.fill_null(0).to_numpy().astype(np.int64), ts.is_not_null().to_numpy()

    for batch in batches:
        if batch.frame.height == 0:
            yield batch
            continue
        rest = batch.frame.slice(0, batch.frame.height - 1)
        parts = ([held] if held is not None else []) + [
            TickBatch(
                rest, batch.raw, batch.where, batch.progress if rest.height else 0, batch.gaps if rest.height else []
            )
        ]
        # the batch's last trade waits for the next batch (with the batch's progress if it is all there is)
        held = TickBatch(
            batch.frame.slice(batch.frame.height - 1),
            batch.raw,
            batch.where,
            0 if rest.height else batch.progress,
            [] if rest.height else batch.gaps,
        )
        ts, valid = (np.concatenate(x) for x in zip(*(times(p.frame) for p in [*parts, held]), strict=True))
        due = dues(ts, valid, judge_last=False)[:-1]  # the held trade is judged with the next batch
        at = 0
        for part in parts:
            yield from release(part, due[at : at + part.frame.height])
            at += part.frame.height
    if held is not None and not stop.is_set():
        ts, valid = times(held.frame)
        yield from release(held, dues(ts, valid, judge_last=True))


def _leading_true(mask: pl.Series) -> int:
    """Number of leading True values in a boolean series."""
    false_at = mask.arg_min()
    if false_at is None or mask[false_at]:
        return mask.len()
    return int(false_at)
