"""Columns of the ticks log and the vectorised checks a tick must pass to be written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

TICK_COLUMNS = ["ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]
# A tick stamped further than this after its receive time is rejected (a broken clock or
# a unit mix-up, such as microseconds read as milliseconds).
MAX_FUTURE_SECONDS = 300
# Plausible time: no trade before this (2000-01-01T00:00:00Z; a zero or 1970 timestamp is a
# broken field), and none far from both of its neighbours in its symbol's stream.
MIN_TS_NS = 946_684_800 * 1_000_000_000
MAX_JUMP_SECONDS = 7 * 86_400


def tick_schema() -> pl.Schema:
    import polars as pl

    utc_ns = pl.Datetime("ns", "UTC")
    return pl.Schema(
        {
            "ts": utc_ns,
            "recv_ts": utc_ns,
            "symbol": pl.String(),
            "price": pl.Float64(),
            "qty": pl.Float64(),
            "side": pl.String(),
            "trade_id": pl.String(),
        }
    )


@dataclass
class Field:
    """How a source parsed one tick field: the original text and the typed value."""

    name: str
    raw: pl.Expr
    value: pl.Expr
    kind: str  # "ts", "price", "qty", "trade_id": picks the reason names


def parse_problems(fields: list[Field]) -> pl.Expr:
    """Reason for the first field that is missing or did not parse, else null."""
    import polars as pl

    expr = pl.lit(None, dtype=pl.String)
    for f in reversed(fields):
        missing = f.raw.is_null() | (f.raw.cast(pl.String) == "")
        expr = (
            pl.when(missing)
            .then(pl.lit(f"missing_{f.kind}"))
            .when(f.value.is_null())
            .then(pl.lit(f"unparseable_{f.kind}" if f.kind != "trade_id" else "missing_trade_id"))
            .otherwise(expr)
        )
    return expr


def problems(frame: pl.DataFrame, max_future_seconds: float = MAX_FUTURE_SECONDS) -> pl.Expr:
    """Vectorised reason for every row that must not be written (null when the row is good).

    `frame` carries the tick columns plus `_parse_problem` from the source; the checks that
    need the log (duplicates already written) are applied by the ingest pipeline.
    """
    import polars as pl

    price, qty = pl.col("price"), pl.col("qty")
    future = pl.col("ts") > pl.col("recv_ts") + pl.duration(microseconds=int(max_future_seconds * 1e6))
    symbol_bad = pl.col("symbol").is_null() | (pl.col("symbol") == "")
    return (
        pl.when(pl.col("_parse_problem") == "line_too_long")  # no field of it was read: not even the symbol
        .then(pl.lit("line_too_long"))
        .when(symbol_bad)
        .then(pl.lit("bad_symbol"))
        .when(pl.col("_parse_problem").is_not_null())
        .then(pl.col("_parse_problem"))
        .when(pl.col("side").is_not_null() & ~pl.col("side").is_in(["buy", "sell"]))
        .then(pl.lit("bad_side"))
        .when(~price.is_finite())
        .then(pl.lit("non_finite_price"))
        .when(price <= 0)
        .then(pl.lit("non_positive_price"))
        .when(~qty.is_finite())
        .then(pl.lit("non_finite_qty"))
        .when(qty <= 0)
        .then(pl.lit("non_positive_qty"))
        .when(future)
        .then(pl.lit("future_ts"))
        .when(pl.col("ts").dt.epoch("ns") < MIN_TS_NS)
        .then(pl.lit("implausible_ts"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


MAX_NS = 2**63 - 1  # the last instant a timestamp[ns] holds (2262-04-11)


def ms_or_us_to_ns(t: pl.Expr) -> pl.Expr:
    """Integer milliseconds since the epoch, or microseconds (Binance's since 2025), told apart
    by magnitude (10^14 ms is in the year 5138) -> nanoseconds; null (unparseable) when negative
    or past 2262, where the product would wrap around into a plausible but wrong instant."""
    import polars as pl

    us = pl.when(t >= 10**14).then(t).when(t >= 0).then(t * 1_000)
    return pl.when(us <= MAX_NS // 1_000).then(us * 1_000)


def ns_to_utc(expr: pl.Expr) -> pl.Expr:
    """Int64 nanoseconds since the epoch -> timestamp[ns, UTC]."""
    import polars as pl

    return expr.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")


def isolated_in_time(ts_ns: np.ndarray, previous: int | None, max_jump_ns: int) -> np.ndarray:
    """Which of one symbol's ticks (in arrival order) lie more than `max_jump_ns` from both the
    tick before (`previous` for the first one) and the tick after: a single trade stamped far
    away from its neighbours, where a real gap in trading has neighbours on its far side too.
    A tick without a known neighbour on either side is not judged."""
    import numpy as np

    before = np.concatenate(([previous if previous is not None else -1], ts_ns[:-1]))
    after = np.concatenate((ts_ns[1:], [-1]))
    known_before = np.ones(ts_ns.size, dtype=bool)
    known_before[0] = previous is not None
    known_after = np.ones(ts_ns.size, dtype=bool)
    known_after[-1] = False
    return known_before & known_after & (np.abs(ts_ns - before) > max_jump_ns) & (np.abs(after - ts_ns) > max_jump_ns)
