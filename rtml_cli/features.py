"""The features stage: ticks log -> closed time bars -> features and delayed-label examples.

Bars and features are computed in DuckDB SQL (`bars.sql`, `features.sql` beside this file).
The build is incremental and exactly-once:

- Each step reads, per symbol, only the ticks it has not consumed plus those of the bar that
  is still open, and the last `lookback` bars from the features log for the windows: its
  cost follows the new data, not the size of the log.
- A bar closes when a tick at or after its end arrives (in arrival order, i.e. offsets), or,
  when following, when the market clock passes its end plus a grace period. A tick for a
  bar that has already closed is *late*: counted and reported, never merged. Because this is
  decided in arrival order, building in many small steps gives the same bars as one build.
- The builder's state (per symbol: ticks consumed, where the open bar's ticks start, the
  newest tick time, bars closed so far, late ticks) is written atomically as a pending
  intent before the features parts are published and committed after, so a crash at any
  point neither duplicates nor skips a bar. Examples are a pure function of the features
  log (example k is features row k with the target from row k + horizon), so they need no
  state of their own.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC
from importlib import resources
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rtml_cli.beat import missing_tail, read_beat
from rtml_cli.build_state import BUILDS, STATE_FILE, BuildState, SymbolState
from rtml_cli.errors import ConfigError, FeatureError, LogError
from rtml_cli.log import OFFSET, LogWriter
from rtml_cli.logs import LogStore, store_for

if TYPE_CHECKING:
    import polars as pl

TICKS, FEATURES, EXAMPLES = "ticks", "features", "examples"
BAR_COLUMNS = [
    "symbol",
    "ts",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "n_trades",
    "vwap",
    "buy_volume",
    "sell_volume",
]
RESERVED = {OFFSET, "target"}
TARGETS = {
    "logret": "log return from the close of bar t to the close of bar t+h",
    "sign": "sign of that log return: 1, 0 or -1 (for classifiers)",
}
NS = 1_000_000_000
_BAR_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NEVER = -(2**62)  # a time before any tick, in ns
# After a bar with trades, empty bars are emitted for at most this long: a symbol silent for
# a month (or one trade stamped years off) makes a gap in the bars, not millions of them.
MAX_EMPTY_SECONDS = 7 * 86_400


def parse_bar(text: str) -> int:
    """'1m' -> 60 (seconds); 1s to 1d."""
    m = _BAR_RE.match(text)
    if not m:
        raise ConfigError(f"--bar {text!r} is not a duration; use e.g. 1s, 30s, 1m, 5m, 1h, 1d")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if not 1 <= seconds <= 86400:
        raise ConfigError(f"--bar {text!r} is outside 1s..1d")
    return seconds


def default_sql() -> str:
    return resources.files("rtml_cli").joinpath("features.sql").read_text()


def _bars_sql() -> str:
    return resources.files("rtml_cli").joinpath("bars.sql").read_text()


@dataclass(frozen=True)
class FeatureSpec:
    bar_s: int = 60
    horizon: int = 5
    target: str = "logret"
    lookback: int = 60
    sql: str = field(default_factory=default_sql, repr=False)

    def params(self) -> dict:
        return {
            "bar_s": self.bar_s,
            "horizon": self.horizon,
            "target": self.target,
            "lookback": self.lookback,
            "sql_sha256": hashlib.sha256(self.sql.encode()).hexdigest(),
        }


@dataclass
class SymbolReport:
    bars: int = 0
    examples: int = 0
    late: int = 0
    ticks: int = 0
    gap_bars_skipped: int = 0


@dataclass
class StepReport:
    symbols: dict[str, SymbolReport] = field(default_factory=dict)

    @property
    def bars(self) -> int:
        return sum(r.bars for r in self.symbols.values())

    @property
    def examples(self) -> int:
        return sum(r.examples for r in self.symbols.values())

    @property
    def ticks(self) -> int:
        return sum(r.ticks for r in self.symbols.values())

    @property
    def late(self) -> int:
        return sum(r.late for r in self.symbols.values())

    @property
    def gap_bars_skipped(self) -> int:
        return sum(r.gap_bars_skipped for r in self.symbols.values())

    def add(self, other: StepReport) -> None:
        for sym, r in other.symbols.items():
            mine = self.symbols.setdefault(sym, SymbolReport())
            mine.bars += r.bars
            mine.examples += r.examples
            mine.late += r.late
            mine.ticks += r.ticks
            mine.gap_bars_skipped += r.gap_bars_skipped


@dataclass
class _Plan:
    """What one step does for one symbol: its new state, and the ticks of the bars it closes."""

    symbol: str
    state: SymbolState
    report: SymbolReport
    ticks: pl.DataFrame  # offset, ts_ns, price, qty, is_buy of the bars in [first, stop)
    first: int  # first bar to emit (ns)
    stop: int  # bars starting before this close in this step
    carry_cap: int  # empty bars from `first` on end before this (ns): the cap after the last trade
    rows: pl.DataFrame | None = None

    @property
    def closes_bars(self) -> bool:
        return self.stop > self.first


def awaited_input(data_dir: Path, logs: LogStore | None = None) -> str | None:
    """What `rtml features --follow` waits for before it can start; None when it is there."""
    ticks = store_for(data_dir, logs).open(TICKS)
    return None if ticks.exists() else f"the ticks log in {ticks.location} (start `rtml ingest`)"


def dry_run(spec: FeatureSpec) -> None:
    """Run the feature query on a few made-up bars: a query that does not parse, fails, or
    breaks the contract is an error before anything is deleted (`--rebuild`) or written."""
    import polars as pl

    n = spec.lookback + spec.horizon + 5
    close = pl.Series([100.0 + (i % 7) - (i % 3) for i in range(n)])
    bars = pl.DataFrame(
        {
            "symbol": ["DRY/RUN"] * n,
            "ts": pl.datetime_range(
                pl.datetime(2026, 1, 1, time_zone="UTC"),
                eager=True,
                interval=f"{spec.bar_s}s",
                time_zone="UTC",
                end=pl.datetime(2026, 1, 1, time_zone="UTC") + pl.duration(seconds=spec.bar_s * (n - 1)),
            ).cast(pl.Datetime("ns", "UTC")),
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": [1.0] * n,
            "n_trades": [1] * n,
            "vwap": close,
            "buy_volume": [0.5] * n,
            "sell_volume": [0.5] * n,
        }
    )
    with FeatureQuery(spec.sql, spec.bar_s * NS, 10) as query:
        query.features(bars)


class StepPlanner:
    """The plan of a step, per symbol: which ticks are new, which are late, which bars close
    (on the symbol's own ticks or on the market clock), and the symbol's state after it."""

    def __init__(self, ticks: Any, data_dir: Path, bar_ns: int, chunk_ticks: int, max_empty: int):
        self.ticks = ticks
        self.data_dir = data_dir
        self.bar_ns = bar_ns
        self.chunk_ticks = chunk_ticks  # the most ticks a step reads per symbol
        self.max_empty = max_empty  # the most empty bars after a bar with trades
        self.verified: set[Path] = set()  # ticks parts checked against their checksums

    def plan(self, sym: str, old: SymbolState, clock_ns: int | None, written: int = -1) -> _Plan | None:
        """Read the new ticks of `sym` (whose state is `old`) and decide what closes; None when
        nothing changed. `clock_ns` is the market clock (following only).

        `written` is the newest offset ingest says it wrote: a log that ends before it, or
        before what the builder has read, has lost its last part(s).
        """
        import polars as pl

        st = SymbolState(**asdict(old))
        rep = SymbolReport()
        old_closed = old.closed_until if old.closed_until is not None else _NEVER
        last_tick = self.ticks.last_offset(sym)
        if last_tick < max(written, old.tick_offset):
            # (a Kafka reader may not have fetched yet what ingest's beat says it published)
            last_tick = self.ticks.catch_up(sym, max(written, old.tick_offset))
        if last_tick < max(written, old.tick_offset):
            raise LogError(missing_tail(self.ticks.name, sym, last_tick, max(written, old.tick_offset), self.data_dir))
        limit = min(last_tick, old.tick_offset + self.chunk_ticks)
        has_new = limit > old.tick_offset
        # The clock closes bars only of a symbol whose ticks have all been read: while one
        # catches up on a backlog, its own ticks say what has closed.
        caught_up = limit == last_tick
        clock_closed = (clock_ns // self.bar_ns) * self.bar_ns if clock_ns is not None and caught_up else _NEVER
        has_open = old.open_from <= old.tick_offset
        used = pl.DataFrame()
        if has_new or (has_open and clock_closed > old_closed):
            ticks = self.ticks.read_after(
                sym,
                old.open_from - 1,
                upto=limit,
                verified=self.verified,
                columns=[
                    pl.col(OFFSET),
                    pl.col("ts").dt.epoch("ns").alias("ts_ns"),
                    pl.col("price"),
                    pl.col("qty"),
                    (pl.col("side") == "buy").alias("is_buy"),  # null when the side is unknown
                ],
            )
            offsets, ts = ticks[OFFSET].to_numpy(), ticks["ts_ns"].to_numpy()
            seed = old.max_ts if old.max_ts is not None else _NEVER
            # What had closed when each tick arrived: the bars before the one holding the
            # newest earlier tick (in arrival order), and those before the old closing point.
            prev_max = np.maximum.accumulate(np.concatenate(([seed], ts[:-1])))
            closed_then = np.maximum(prev_max // self.bar_ns * self.bar_ns, old_closed)
            is_new = offsets > old.tick_offset
            late = is_new & (ts < closed_then)
            done = ~is_new & (ts < old_closed)  # re-read ticks of bars emitted before
            if is_new.any():
                rep.ticks = int(is_new.sum())
                rep.late = int(late.sum())
                st.late = old.late + rep.late
                st.max_ts = max(seed, int(ts[is_new].max()))
                st.tick_offset = limit
            used = ticks.filter(pl.Series(~late & ~done))
        if old.closed_until is not None:
            first = old.closed_until
        elif used.height:  # a symbol's first bar is the one of its first (not late) tick
            first = cast(int, used["ts_ns"].min()) // self.bar_ns * self.bar_ns
        else:
            return None  # no ticks for this symbol yet
        assert st.max_ts is not None  # a symbol with a first bar has had a tick
        closed = max(first, (st.max_ts // self.bar_ns) * self.bar_ns, clock_closed)
        st.closed_until = closed
        if has_new or used.height:
            still_open = used.filter(pl.col("ts_ns") >= closed)
            st.open_from = cast(int, still_open[OFFSET].min()) if still_open.height else limit + 1
        closing = used.filter(pl.col("ts_ns") < closed) if used.height else used
        if closing.height:
            newest_bar = cast(int, closing["ts_ns"].max()) // self.bar_ns * self.bar_ns
            st.last_trade_bar = max(newest_bar, old.last_trade_bar if old.last_trade_bar is not None else _NEVER)
        if st == old:
            return None
        cap_from = old.last_trade_bar if old.last_trade_bar is not None else first
        carry_cap = cap_from + (self.max_empty + 1) * self.bar_ns
        return _Plan(sym, st, rep, closing, first, closed, carry_cap)


class FeatureQuery:
    """The DuckDB session a builder runs its two queries in: `bars.sql` (ticks into bars) and
    the feature query. The feature query is a query, not a program: exactly one SELECT, on a
    connection with no files, no network, no extensions, no Python variables by name, and no
    settings it could change back."""

    def __init__(self, sql: str, bar_ns: int, max_empty: int):
        import duckdb

        _check_query(sql)
        self.sql = sql
        self.params = {"bar": bar_ns, "max_empty": max_empty}
        self._bars_sql = _bars_sql()
        self.con = duckdb.connect(config={"enable_external_access": False, "python_enable_replacements": False})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET lock_configuration = true")

    def __enter__(self) -> FeatureQuery:
        return self

    def __exit__(self, *exc) -> None:
        self.con.close()

    def bars(self, ticks: pl.DataFrame, bounds: pl.DataFrame) -> pl.DataFrame:
        """Each symbol's bars in [first, stop) from its `ticks` (see bars.sql)."""
        con = self.con
        con.register("ticks", ticks.to_arrow())
        con.register("bounds", bounds.to_arrow())
        try:
            return con.sql(self._bars_sql, params=self.params).pl()
        finally:
            con.unregister("ticks")
            con.unregister("bounds")

    def features(self, bars: pl.DataFrame) -> pl.DataFrame:
        """The feature query over `bars` (the new bars and the look-back before them): the
        bars as they are, plus the query's feature columns, checked against the contract."""
        import duckdb
        import polars as pl

        con = self.con
        con.register("bars", bars.to_arrow())
        try:
            rel = con.sql(self.sql)
            if rel is None:
                raise FeatureError("the feature query must be a SELECT over `bars` that returns rows")
            out = rel.pl()
        except duckdb.Error as exc:
            raise FeatureError(f"the feature query failed: {str(exc).splitlines()[0]}") from None
        finally:
            con.unregister("bars")
        _check_contract(out, bars.height)
        if not isinstance(out.schema["ts"], pl.Datetime) or out.schema["symbol"] != pl.String:
            raise FeatureError("the feature query must return `ts` and `symbol` as they are in `bars`")
        out = out.with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC"))).sort("symbol", "ts")
        keys = bars.select("symbol", "ts").sort("symbol", "ts")
        if not out.select("symbol", "ts").equals(keys):
            raise FeatureError(
                "the feature query changed `symbol` or `ts`; it must return each bar of `bars` once, as it is"
            )
        # The bars are rtml's: whatever the query did to them, the stored ones are the input's.
        features = [c for c in out.columns if c not in BAR_COLUMNS]
        return (
            keys.join(bars, on=["symbol", "ts"], how="left", maintain_order="left")
            .select("ts", "symbol", *[c for c in BAR_COLUMNS if c not in ("ts", "symbol")])
            .hstack(
                out.select(pl.col(c).cast(pl.Float64) if out.schema[c].is_decimal() else pl.col(c) for c in features)
            )
        )


class RecentRows:
    """The newest features rows of each symbol, kept in memory: what the look-back windows
    and the examples' targets read. A following builder appends a small part per step, so
    reading them from the log would open more files the longer it runs."""

    def __init__(self, features: Any, keep: int):
        self.features = features
        self.keep = keep
        self.rows: dict[str, pl.DataFrame] = {}

    def last(self, sym: str, n: int) -> pl.DataFrame:
        """The symbol's last `n` features rows (without offsets)."""
        rows = self.after(sym, self.features.last_offset(sym) - n)
        return rows.drop(OFFSET) if rows.height else rows

    def after(self, sym: str, after: int) -> pl.DataFrame:
        """Features rows after offset `after`, from memory when the recent rows cover them.

        A following builder appends a small part per step, so reading the look-back from
        the log would open more files the longer it runs; the recent rows it keeps make a
        step's cost independent of that.
        """
        import polars as pl

        recent = self.rows.get(sym)
        if recent is None:
            recent = self.features.read_after(sym, self.features.last_offset(sym) - self.keep)
            self.rows[sym] = recent
        if recent.height and int(recent[OFFSET][0]) <= after + 1:
            return recent.filter(pl.col(OFFSET) > after)
        return self.features.read_after(sym, after)

    def remember(self, sym: str, rows: pl.DataFrame, first_offset: int) -> None:
        """Rows just appended to the features log at `first_offset`."""
        import polars as pl

        rows = rows.select(
            pl.int_range(first_offset, first_offset + rows.height, dtype=pl.Int64).alias(OFFSET), pl.all()
        )
        recent = self.rows.get(sym)
        merged = rows if recent is None or recent.height == 0 else pl.concat([recent, rows.cast(recent.schema)])
        self.rows[sym] = merged.tail(self.keep)


class FeatureBuilder:
    """Builds the features and examples logs from the ticks log; use as a context manager."""

    def __init__(
        self,
        data_dir: Path,
        spec: FeatureSpec,
        symbols: list[str] | None = None,
        chunk_ticks: int = 2_000_000,
        logs: LogStore | None = None,
    ):
        if spec.target not in TARGETS:
            raise ConfigError(f"--target {spec.target!r} is not one of {', '.join(TARGETS)}")
        if spec.horizon < 1:
            raise ConfigError("--horizon must be at least 1 bar")
        if spec.lookback < 31:
            raise ConfigError(
                "--lookback must be at least 31 bars (the default features use 30-bar windows of returns)"
            )
        self.data_dir = Path(data_dir)
        self.spec = spec
        self.bar_ns = spec.bar_s * NS
        self.wanted = symbols
        self.logs = store_for(data_dir, logs)
        self.ticks = self.logs.open(TICKS)
        self.features = self.logs.open(FEATURES)
        self.examples = self.logs.open(EXAMPLES)
        self.state: dict[str, SymbolState] = {}
        self._stack = ExitStack()
        self.max_empty = max(10, MAX_EMPTY_SECONDS // spec.bar_s)
        self.planner = StepPlanner(self.ticks, self.data_dir, self.bar_ns, chunk_ticks, self.max_empty)
        self.recent = RecentRows(self.features, max(spec.lookback, spec.horizon + 1))

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FeatureBuilder:
        if not self.ticks.exists():
            raise ConfigError(
                f"there is no ticks log in {self.logs.where}; run `rtml ingest` first or check --data-dir / --log"
            )
        try:
            self.fw: LogWriter = self._stack.enter_context(self.features.writer())
            self.ew: LogWriter = self._stack.enter_context(self.examples.writer())
            self.query = self._stack.enter_context(FeatureQuery(self.spec.sql, self.bar_ns, self.max_empty))
            self.store = BuildState.load(self.data_dir, self.spec.params(), self.features, self.examples, self.logs)
            self.state, self.build_id = self.store.symbols, self.store.build_id
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def symbols(self) -> list[str]:
        present = self.ticks.partitions()
        return [s for s in present if self.wanted is None or s in self.wanted]

    # -- the step ------------------------------------------------------------------------------

    def backlog(self) -> int:
        """Ticks not yet consumed, over the symbols this builder serves."""
        return sum(
            max(0, self.ticks.last_offset(s) - self.state.get(s, SymbolState()).tick_offset) for s in self.symbols()
        )

    def step(self, clock_ns: int | None = None) -> StepReport:
        """Consume up to `chunk_ticks` new ticks per symbol and publish what closed.

        `clock_ns` (following only) closes bars whose end plus grace it has passed, even
        without a tick after them.
        """
        report = StepReport()
        beat = read_beat(self.data_dir, self.logs)
        written = {
            s: o
            for s, o in (beat.offsets if beat else {}).items()
            if (self.wanted is None or s in self.wanted) and self.logs.owns(s)
        }
        symbols = sorted(set(self.symbols()) | set(written))
        plans = []
        for sym in symbols:
            plan = self.planner.plan(sym, self.state.get(sym, SymbolState()), clock_ns, written.get(sym, -1))
            if plan is not None:
                plans.append(plan)
        if plans:
            rows = self._bars_and_features([p for p in plans if p.closes_bars])
            for plan in plans:
                plan.rows = rows.get(plan.symbol)
                plan.report.bars = plan.rows.height if plan.rows is not None else 0
                plan.state.bars += plan.report.bars
                if plan.closes_bars:
                    plan.report.gap_bars_skipped = (plan.stop - plan.first) // self.bar_ns - plan.report.bars
                    plan.state.gap_bars_skipped += plan.report.gap_bars_skipped
            self._publish(plans, report)
        # Every symbol, not only the updated ones: a crash may have come between publishing
        # features and deriving their examples.
        for sym in symbols:
            n = self._emit_examples(sym)
            if n:
                report.symbols.setdefault(sym, SymbolReport()).examples = n
        return report

    def _publish(self, plans: list[_Plan], report: StepReport) -> None:
        """Intent, features parts, commit: the order that makes a crash anywhere recoverable."""
        pending = {p.symbol: {"state": asdict(p.state), "expect_last_offset": p.state.bars - 1} for p in plans}
        self.store.save(pending)
        for p in plans:
            if p.rows is not None and p.rows.height:
                first, _ = self.fw.append(p.symbol, p.rows)
                self.recent.remember(p.symbol, p.rows, first)
            self.state[p.symbol] = p.state
            report.symbols[p.symbol] = p.report
        self.store.save()
        for p in plans:  # committed: a step reads ticks from open_from on
            self.ticks.release(p.symbol, p.state.open_from - 1)

    def _bars_and_features(self, plans: list[_Plan]) -> dict[str, pl.DataFrame]:
        """The new features rows of every planned symbol: one bars query, one feature query."""
        import polars as pl

        if not plans:
            return {}
        # Symbols travel to DuckDB as small integers: a text column of millions of rows
        # costs more to hand over than the whole aggregation.
        names = [p.symbol for p in plans]
        tick_frames, bounds, histories = [], [], []
        for sid, p in enumerate(plans):
            history = self.recent.last(p.symbol, self.spec.lookback)
            bounds.append((sid, p.first, p.stop, float(history["close"][-1]) if history.height else None, p.carry_cap))
            if history.height:
                histories.append(history.select(BAR_COLUMNS))
            if p.ticks.height:
                # `ord` orders trades by time, then arrival: the row number when the times
                # are already in order (the usual case), else their rank.
                if p.ticks["ts_ns"].is_sorted():
                    order = pl.int_range(p.ticks.height, dtype=pl.Int64)
                else:
                    order = pl.struct("ts_ns", OFFSET).rank("ordinal").cast(pl.Int64)
                tick_frames.append(
                    p.ticks.select(
                        pl.lit(sid, dtype=pl.Int32).alias("symbol"),
                        (pl.col("ts_ns") // self.bar_ns * self.bar_ns).alias("bucket"),
                        order.alias("ord"),
                        "price",
                        "qty",
                        "is_buy",
                    )
                )
        ticks = (
            pl.concat(tick_frames)
            if tick_frames
            else pl.DataFrame(
                schema={
                    "symbol": pl.Int32,
                    "bucket": pl.Int64,
                    "ord": pl.Int64,
                    "price": pl.Float64,
                    "qty": pl.Float64,
                    "is_buy": pl.Boolean,
                }
            )
        )
        bounds_df = pl.DataFrame(
            bounds,
            schema={
                "symbol": pl.Int32,
                "first": pl.Int64,
                "stop": pl.Int64,
                "prev_close": pl.Float64,
                "carry_cap": pl.Int64,
            },
            orient="row",
        )
        bars = (
            self.query.bars(ticks, bounds_df)
            .select(
                pl.col("symbol").replace_strict(list(range(len(names))), names, return_dtype=pl.String),
                pl.col("bucket").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts"),
                pl.exclude("symbol", "bucket"),
            )
            .cast({"n_trades": pl.Int64})
        )
        window = pl.concat([h.cast(bars.schema) for h in histories] + [bars])
        out = self.query.features(window)
        new = out.join(bars.select("symbol", "ts"), on=["symbol", "ts"], how="semi")
        return {sym: part for (sym,), part in new.partition_by("symbol", as_dict=True, maintain_order=True).items()}

    # -- examples ------------------------------------------------------------------------------

    def _emit_examples(self, sym: str) -> int:
        """Append example k (features row k + its target) for every k whose row k+h exists."""
        import polars as pl

        h = self.spec.horizon
        feat_last = self.features.last_offset(sym)
        ex_last = self.examples.last_offset(sym)
        due = feat_last - h  # the newest features row whose label is known
        if due <= ex_last:
            return 0
        rows = self.recent.after(sym, ex_last)
        if rows.height == 0 or int(rows[OFFSET][0]) != ex_last + 1:
            raise LogError(
                f"the examples log of {sym!r} does not line up with its features log; run `rtml features --rebuild`"
            )
        logret = (pl.col("close").shift(-h) / pl.col("close")).log()
        target = logret if self.spec.target == "logret" else logret.sign()
        examples = rows.with_columns(target=target).filter(pl.col(OFFSET) <= due).drop(OFFSET)
        self.ew.append(sym, examples)
        self.examples.release(sym, self.examples.last_offset(sym))  # the builder reads only their last offset
        return examples.height

    # -- drivers -------------------------------------------------------------------------------

    def build(self, on_progress: Callable[[StepReport], None] | None = None, stop: Event | None = None) -> StepReport:
        """Consume everything in the ticks log now (in chunks), then return the total; or,
        once `stop` is set, after the step in progress (each step is committed: the next run
        goes on)."""
        total = StepReport()
        for rep in self.loop(stop or Event(), follow=False):
            total.add(rep)
            if on_progress:
                on_progress(rep)
        return total

    def loop(self, stop: Event, follow: bool, poll: float = 0.5, grace: float = 2.0) -> Iterator[StepReport]:
        """The stage, step by step: what each step read and emitted.

        One-shot, it ends when a step finds no new ticks, or after the step in progress once
        `stop` is set. Following, see `follow`."""
        if follow:
            yield from self.follow(stop, poll, grace)
            return
        while True:
            rep = self.step()
            yield rep
            if rep.ticks == 0 or stop.is_set():
                return

    def follow(self, stop: Event, poll: float = 0.5, grace: float = 2.0) -> Iterator[StepReport]:
        """Build, then keep building as ticks arrive, until `stop` is set.

        Bars also close on the market clock: the newest tick time of any symbol, advanced by
        the wall time since it was seen, minus `grace` seconds. So an illiquid symbol's bars
        still close, and a paused replay of old data does not close every bar at once. When
        ingest keeps a heartbeat (see `beat`), only wall time during which ingest ran counts:
        an ingest outage stops the clock instead of closing the bars it has yet to fill.
        """
        base, seen_at = None, time.time()
        while not stop.is_set():
            known = [st.max_ts for st in self.state.values() if st.max_ts is not None]
            now = time.time()
            beat = read_beat(self.data_dir, self.logs)
            # the clock's base: the newest tick read, but never past ingest's watermark (a
            # flush half published says nothing of the symbols still to come)
            newest = max(known) if known else None
            if newest is not None and beat is not None:
                newest = None if beat.watermark is None else min(newest, beat.watermark)
            if newest is not None and (base is None or newest > base):
                base, seen_at = newest, now
            clock = None
            if base is not None:
                ran = now - seen_at if beat is None else beat.alive_between(seen_at, now)
                clock = base + int((ran - grace) * NS)
            rep = self.step(clock)
            yield rep
            if rep.ticks == 0:
                stop.wait(poll)


def _check_query(sql: str) -> None:
    """The feature query must be exactly one SELECT (WITH ... SELECT counts)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FeatureError(f"the feature query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise FeatureError(
            f"the feature query must be exactly one SELECT statement; it has {len(statements)} statements"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise FeatureError(f"the feature query must be a SELECT over `bars`, not a {kind.name} statement")


def _check_contract(out: pl.DataFrame, rows_in: int) -> None:
    import polars as pl

    missing = [c for c in BAR_COLUMNS if c not in out.columns]
    if missing:
        raise FeatureError(
            f"the feature query's output lacks {', '.join(missing)}; it must return every column "
            "of `bars` (e.g. SELECT *, <features> FROM bars)"
        )
    clash = sorted(RESERVED & set(out.columns))
    if clash:
        raise FeatureError(f"the feature query may not return {', '.join(clash)}: rtml adds those columns")
    if out.height != rows_in:
        raise FeatureError(
            f"the feature query returned {out.height} rows for {rows_in} bars; it must return one row per bar"
        )
    features = [c for c in out.columns if c not in BAR_COLUMNS]
    if not features:
        raise FeatureError("the feature query returns no feature columns besides the bar columns")
    bad = [c for c in features if not out.schema[c].is_numeric() and out.schema[c] != pl.Boolean]
    if bad:
        raise FeatureError(f"feature column(s) {', '.join(bad)} are not numeric; models need numbers")


def remove_built(data_dir: Path, logs: LogStore | None = None) -> None:
    """Delete the features and examples logs and the builder state (for --rebuild)."""
    store = store_for(data_dir, logs)
    if store.leads():  # on Kafka: the builder owning partition 0 deletes the topics; each other its state
        # (on Kafka the predictions go too: their features offsets mean other rows after a rebuild,
        # and a topic is not a directory a user moves away)
        for name in (FEATURES, EXAMPLES, *((BUILDS, "predictions") if store.is_kafka else ())):
            store.open(name).delete()
    (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)


def summarize(builder: FeatureBuilder, report: StepReport, elapsed: float) -> dict:
    """What a run did and where each symbol stands, for the summary table and --json."""
    from datetime import datetime

    def iso(ns: int | None) -> str | None:
        return datetime.fromtimestamp(ns / NS, UTC).isoformat() if ns is not None else None

    symbols = {}
    for sym in builder.symbols():
        st = builder.state.get(sym, SymbolState())
        r = report.symbols.get(sym, SymbolReport())
        symbols[sym] = {
            "bars_emitted": r.bars,
            "examples_emitted": r.examples,
            "late_ticks": r.late,
            "ticks_read": r.ticks,
            "features_rows": builder.features.last_offset(sym) + 1,
            "examples_rows": builder.examples.last_offset(sym) + 1,
            "closed_until": iso(st.closed_until),
            "newest_tick": iso(st.max_ts),
            "late_ticks_total": st.late,
            "gap_bars_skipped": r.gap_bars_skipped,
            "gap_bars_skipped_total": st.gap_bars_skipped,
            "ticks_backlog": max(0, builder.ticks.last_offset(sym) - st.tick_offset),
        }
    return {
        "data_dir": str(builder.data_dir),
        "params": builder.spec.params(),
        "bars_emitted": report.bars,
        "examples_emitted": report.examples,
        "late_ticks": report.late,
        "gap_bars_skipped": report.gap_bars_skipped,
        "ticks_read": report.ticks,
        "elapsed_s": round(elapsed, 3),
        "symbols": symbols,
    }
