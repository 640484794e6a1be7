"""The backtest: replay history through the model code `rtml train` uses, predict-then-learn,
with labels arriving only when they would have in real time; score it against baselines,
trade on it, and measure what a stale serving copy of the model costs.

Row i of a stream (a symbol) is predicted first; its label is learned only after `delay`
more rows of that stream have been predicted (for the examples log, delay = the horizon,
because example t is emitted when bar t+h closes). The learner is `learner.Learner`, the
very object `rtml train` steps, so a backtest and a live run cannot drift apart.

Serving staleness: the model that serves predictions is a copy of the learner refreshed
every R rows. R = 1 is the learner itself (a live refresh per bar); `never` is a copy taken
after `--warmup` rows and never refreshed: the static model a batch system would serve.
"""

from __future__ import annotations

import copy
import math
import os
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, cast

from rtml_cli import stats
from rtml_cli.build_state import read_build
from rtml_cli.errors import ConfigError, RtmlError
from rtml_cli.inputs import Rows, frame_to_parquet, scratch, write_rows
from rtml_cli.learner import DIVERGENCE_FACTOR, MIN_TARGETS, Learner, feature_columns, predict_value
from rtml_cli.log import OFFSET
from rtml_cli.logs import LogStore, store_for
from rtml_cli.models import CLASSIFIER, resolve
from rtml_cli.trading import FEE_LADDER_BPS, Book, Tape, directions, mark, summarize, tape_from_prices

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

NEVER = None  # the refresh interval of a model frozen after the warm-up
RETURNS = ("log", "simple", "percent", "none")
YEAR_S = 365.25 * 86_400


def parse_refresh(text: str) -> list[int | None]:
    """'1,60,never' -> [1, 60, None]; 1 and never are always there (the live model and the frozen one)."""
    out: set[int | None] = {1, NEVER}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == "never":
            continue
        if not (item.isascii() and item.isdigit()) or int(item) < 1:
            raise ConfigError(f"--refresh {text!r}: each interval is a number of rows >= 1, or 'never'")
        out.add(int(item))
    return [*sorted(r for r in out if r is not None), NEVER]


def refresh_label(r: int | None) -> str:
    return "never" if r is None else str(r)


@dataclass
class Dataset:
    """The rows to replay, in order: model inputs, targets, streams and times, and the tape
    that trading is marked to."""

    source: str
    rows: Rows  # the model inputs, streamed from disk in replay order
    y: np.ndarray
    stream: np.ndarray  # int32 stream number per row; labels are delayed within a stream
    stream_names: list[str]
    ts: np.ndarray | None  # int64 ns, or None
    delay: int
    hold: int  # periods a position is held: the target's horizon
    periods_per_year: float
    features: list[str]
    period: np.ndarray | None = None  # int64 per row: its bar, its time's rank, or its place in the stream
    target_kind: str = "regressor"
    dropped: int = 0  # rows without a target
    clock: np.ndarray | None = None  # what --refresh counts per row: bars for the examples log; None: rows
    tape: Tape | None = None  # prices (or returns) that positions are marked to
    point: np.ndarray | None = None  # each row's point on the tape
    trades_on: str | None = None  # what the tape is, in words
    no_trading: str | None = None  # why there are no trading figures, when there are none
    scratch: Any = None  # the temporary directory `rows` lives in, removed with the dataset

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def periods(self) -> np.ndarray:
        import numpy as np

        return self.period if self.period is not None else np.arange(self.n)


@dataclass
class BacktestOptions:
    models: list[str] = field(default_factory=lambda: ["linear"])
    refresh: list[int | None] = field(default_factory=lambda: [1, NEVER])
    warmup: int = 500
    fee_bps: float = 0.0
    band: float = 0.0
    symbols: list[str] | None = None
    start: str | None = None
    end: str | None = None
    table: Path | None = None
    target: str | None = None
    ts: str | None = None
    delay: int = 0
    returns: str | None = None
    periods_per_year: float | None = None
    jobs: int = 1
    window: int = 500
    price: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    by_symbol: bool = False  # one model per symbol instead of one for all


# -- input --------------------------------------------------------------------------------------


def load_examples(data_dir: Path, opts: BacktestOptions, logs: LogStore | None = None) -> Dataset:
    """The examples log of a data directory: label delay and holding period = the horizon;
    trading is marked to the bars' closes (from the features log, which also holds the h
    bars after the newest example)."""
    import polars as pl

    if opts.price or opts.returns:
        raise ConfigError("--price and --returns describe a --table; the examples log trades on its bars' closes")
    store = store_for(data_dir, logs)
    log = store.open("examples")
    build = read_build(data_dir, store)
    if not log.exists() or build is None:
        raise ConfigError(f"there is no examples log in {store.where}; run `rtml features` first, or give --table")
    horizon, bar_s, target = build.horizon, build.bar_s, build.target
    symbols = [s for s in log.partitions() if opts.symbols is None or s in opts.symbols]
    names = pl.Enum(sorted(symbols))  # compact, and sorted as the names are
    # One symbol in memory at a time: its features go to a file of their own, the columns
    # the replay orders by stay here.
    tmp = scratch()
    files: list[Path] = []
    metas: list[pl.DataFrame] = []
    columns: dict[str, None] = {}  # every symbol's columns, in order of appearance
    rows = 0
    for s in symbols:
        part = _between(log.read_after(s), "ts", opts)
        if part.height == 0:
            continue
        columns |= dict.fromkeys(part.columns)
        files.append(Path(tmp.name) / f"examples-{len(files)}.parquet")
        frame_to_parquet(iter([part]), feature_columns(part.columns), files[-1])
        metas.append(
            part.select("ts", pl.col("symbol").cast(names), OFFSET, "target").with_columns(
                _file_row=pl.int_range(rows, rows + part.height, dtype=pl.Int64)
            )
        )
        rows += part.height
    if not metas:
        if any(log.last_offset(s) >= 0 for s in symbols):
            raise ConfigError("no examples between --from and --to")
        raise ConfigError(f"the examples log in {store.where} has no rows{' for --symbols' if opts.symbols else ''}")
    frame = pl.concat(metas).sort("ts", "symbol", OFFSET)
    del metas
    bars = _bar_closes(store.open("features"), frame, horizon)
    ds = _dataset(
        frame,
        "target",
        "symbol",
        "ts",
        feature_columns(list(columns)),
        f"examples log of {store.where}",
        files,
        tmp,
        delay=horizon,
        hold=horizon,
        periods_per_year=opts.periods_per_year or YEAR_S / bar_s,
        prices=bars,
        by_bar=True,
    )
    ds.target_kind = CLASSIFIER if target == "sign" else "regressor"
    return ds


def _bar_closes(features: Any, examples: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """symbol, ts, close of every bar from each symbol's first example to `horizon` bars after
    its last: the prices its positions are marked to. Example k is features row k."""
    import polars as pl

    out = []
    for sym, lo, hi in (
        examples.group_by("symbol").agg(pl.col(OFFSET).min().alias("lo"), pl.col(OFFSET).max().alias("hi")).iter_rows()
    ):
        bars = features.read_after(sym, lo - 1, columns=["ts", "close"], upto=hi + horizon)
        out.append(bars.with_columns(symbol=pl.lit(sym, dtype=pl.String)))
    return pl.concat(out).select("symbol", "ts", "close")


def load_table(opts: BacktestOptions) -> Dataset:
    """A user's Parquet or CSV table: feature columns (every numeric column but the target,
    --ts and --price) and a target; a `symbol` column, if there is one, makes each symbol a stream."""
    import polars as pl

    assert opts.table is not None
    path = Path(opts.table)
    if not path.is_file():
        raise ConfigError(f"--table {path} is not a file")
    tmp = scratch()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            src = path
            schema = pl.read_parquet_schema(path)
        else:  # a CSV is read whole once, and kept as Parquet for the replay to stream
            src = Path(tmp.name) / "table.parquet"
            pl.read_csv(path, try_parse_dates=True, infer_schema_length=10_000).write_parquet(src)
            schema = pl.read_parquet_schema(src)
    except Exception as exc:
        raise ConfigError(
            f"cannot read --table {path} ({type(exc).__name__}: {str(exc)[:200]}); "
            "give a Parquet file or a CSV file with a header"
        ) from None
    if not opts.target:
        raise ConfigError("--table needs --target COLUMN: the column to predict")
    for name, col in (("--target", opts.target), ("--ts", opts.ts), ("--price", opts.price)):
        if col is not None and col not in schema:
            raise ConfigError(f"{name} {col!r} is not a column of {path.name}; it has {', '.join(list(schema)[:30])}")
    # Only the columns that order, filter and score the rows are held; the features stay on disk.
    held = [c for c in dict.fromkeys([opts.target, opts.ts, opts.price, "symbol"]) if c is not None and c in schema]
    import pyarrow.parquet as pq

    # (symbols as a dictionary, so that ten million of them take four bytes each)
    words = [c for c in held if c == "symbol" and schema[c] == pl.String]
    read = pl.from_arrow(pq.read_table(src, columns=held, read_dictionary=words or None))
    assert isinstance(read, pl.DataFrame)
    frame = read.with_row_index("_file_row")
    del read
    if not frame[opts.target].dtype.is_numeric():
        raise ConfigError(f"--target {opts.target!r} is {frame[opts.target].dtype}, not numbers")
    if opts.price is not None:
        if opts.returns is not None:
            raise ConfigError(
                "--price and --returns both say how to trade: give one (--price marks positions to "
                "that column; --returns reads the target as the next row's return)"
            )
        if opts.price == opts.target:
            raise ConfigError("--price is the --target column; give the column of prices")
        if not frame[opts.price].dtype.is_numeric():
            raise ConfigError(f"--price {opts.price!r} is {frame[opts.price].dtype}, not numbers")
    if opts.ts is not None:
        if frame[opts.ts].dtype == pl.String:
            frame = frame.with_columns(pl.col(opts.ts).str.to_datetime(time_zone="UTC", strict=False))
        if not isinstance(frame[opts.ts].dtype, pl.Datetime) and frame[opts.ts].dtype != pl.Date:
            raise ConfigError(f"--ts {opts.ts!r} holds {frame[opts.ts].dtype}, not times")
        if frame[opts.ts].null_count():
            raise ConfigError(
                f"--ts {opts.ts!r} has {frame[opts.ts].null_count():,} rows without a readable time; "
                "use ISO times like 2026-01-01T12:00:00"
            )
        try:
            if frame[opts.ts].dtype == pl.Date:
                frame = frame.with_columns(pl.col(opts.ts).cast(pl.Datetime("us")))
            dtype = frame[opts.ts].dtype
            zoned = isinstance(dtype, pl.Datetime) and dtype.time_zone is not None  # zoned convert; naive are UTC
            frame = frame.with_columns(
                pl.col(opts.ts).dt.convert_time_zone("UTC") if zoned else pl.col(opts.ts).dt.replace_time_zone("UTC")
            )
            frame = frame.with_columns(pl.col(opts.ts).cast(pl.Datetime("ns", "UTC")))
            if not frame[opts.ts].is_sorted():  # (a stable sort of sorted rows would only copy them)
                frame = frame.sort(opts.ts, maintain_order=True)
        except pl.exceptions.PolarsError as exc:
            raise ConfigError(
                f"--ts {opts.ts!r} holds times rtml cannot use (years 1678-2261 only): {str(exc).splitlines()[0][:160]}"
            ) from None
        frame = _between(frame, opts.ts, opts)
    elif opts.start or opts.end:
        raise ConfigError("--from/--to need --ts COLUMN for a --table")
    stream = "symbol" if "symbol" in frame.columns else None
    if stream:
        if opts.ts is None:
            # in file order, a table sorted by symbol would learn one symbol's future before another's past
            raise ConfigError(
                f"{path.name} has a symbol column: give --ts COLUMN, so that rows are replayed in time order"
            )
        if frame["symbol"].dtype not in (pl.String, pl.Categorical):
            frame = frame.with_columns(pl.col("symbol").cast(pl.String))
        if frame["symbol"].null_count():
            raise ConfigError(f"{path.name} has {frame['symbol'].null_count():,} rows without a symbol")
        if opts.symbols is not None:
            frame = frame.filter(pl.col("symbol").cast(pl.String).is_in(opts.symbols))
    elif opts.symbols is not None:
        raise ConfigError(f"--symbols needs a symbol column, and {path.name} has none")
    skip = {opts.target, opts.ts, stream, opts.price}
    features = [c for c, t in schema.items() if c not in skip and t.is_numeric()]
    if not features:
        raise ConfigError(f"{path.name} has no numeric feature columns besides the target")
    if frame[opts.target].dtype != pl.Float64:  # decimals and integers alike
        frame = frame.with_columns(pl.col(opts.target).cast(pl.Float64))
    longest = cast(int, frame.group_by(stream).len()["len"].max()) if stream else frame.height
    if frame.height and opts.delay >= longest:
        raise ConfigError(
            f"--delay {opts.delay} is longer than the data: the longest stream has {longest:,} rows, "
            "so no label would ever arrive"
        )
    hold = max(opts.delay, 1)
    prices = None
    if opts.price is not None:
        prices = _table_prices(frame, opts.price, stream, opts.ts, path.name)
    ppy = opts.periods_per_year or _periods_per_year(frame, opts.ts) or 252.0
    return _dataset(
        frame,
        opts.target,
        stream,
        opts.ts,
        features,
        f"table {path}",
        [src],
        tmp,
        delay=opts.delay,
        hold=hold,
        periods_per_year=ppy,
        prices=prices,
        returns=opts.returns or "none",
        price_name=opts.price,
    )


def _table_prices(frame: pl.DataFrame, price: str, stream: str | None, ts: str | None, name: str) -> pl.DataFrame:
    """symbol, ts (or row), close from a table's --price column, checked: positive numbers,
    one per symbol and time."""
    import polars as pl

    col = frame[price].cast(pl.Float64)
    missing = int(col.is_null().sum()) + int(col.is_nan().sum())
    if missing:
        raise ConfigError(f"--price {price!r} has {missing:,} rows without a price; trading needs a price on every row")
    bad = frame.with_row_index("_row").filter(pl.col(price).cast(pl.Float64) <= 0)
    if bad.height:
        row = bad.row(0, named=True)
        raise ConfigError(
            f"--price {price!r} has {bad.height:,} rows at or below zero (the first: row {row['_row'] + 1}, "
            f"{row[price]}); a price must be positive"
        )
    if not col.is_finite().all():
        raise ConfigError(f"--price {price!r} has infinite values; a price must be a positive number")
    out = frame.select(
        (pl.col(stream) if stream else pl.lit("all")).alias("symbol"),
        pl.col(ts).alias("ts") if ts else pl.int_range(pl.len()).alias("ts"),
        pl.col(price).cast(pl.Float64).alias("close"),
    )
    dupes = out.height - out.select("symbol", "ts").n_unique()
    if dupes:
        raise ConfigError(
            f"{name} has {dupes:,} rows with the same {'symbol and ' if stream else ''}time; "
            "trading on --price needs one price per symbol and time"
        )
    return out


def _between(frame: pl.DataFrame, ts: str, opts: BacktestOptions) -> pl.DataFrame:
    import polars as pl

    for bound, op in ((opts.start, "ge"), (opts.end, "lt")):
        if bound:
            frame = frame.filter(getattr(pl.col(ts), op)(parse_time(bound)))
    return frame


def parse_time(text: str) -> datetime:
    """--from/--to: a date or date-time, UTC unless it names a zone."""
    import polars as pl

    try:
        return pl.Series([text]).str.to_datetime(time_zone="UTC").item()
    except Exception:
        raise ConfigError(f"{text!r} is not a time; use e.g. 2026-01-01 or 2026-01-01T12:00") from None


def _periods_per_year(frame: pl.DataFrame, ts: str | None) -> float | None:
    """Periods (distinct times) per year, from the first and last times."""
    if ts is None or frame.height < 3:
        return None
    span = (cast(datetime, frame[ts].max()) - cast(datetime, frame[ts].min())).total_seconds()
    return (frame[ts].n_unique() - 1) / (span / YEAR_S) if span > 0 else None


def _dataset(
    frame: pl.DataFrame,
    target: str,
    stream: str | None,
    ts: str | None,
    features: list[str],
    source: str,
    files: list[Path],
    tmp: Any,
    prices: pl.DataFrame | None = None,
    by_bar: bool = False,
    returns: str = "none",
    price_name: str | None = None,
    **kw: Any,
) -> Dataset:
    """The rows with a target, their periods, and the tape trading is marked to: `prices`
    (symbol, ts, close), or, without them, the target itself as the next row's return when
    the holding period is one row and `returns` says what kind of return it is.

    `frame` holds the columns that order and score the rows, in replay order, and `_file_row`:
    each row's number in `files` (Parquet, read one after the other), which hold the
    features; those are written in replay order to a file in `tmp`, to be streamed."""
    import numpy as np
    import polars as pl

    timed = ts is not None or by_bar  # periods are times; else a table's rows (one stream)
    # (column by column into numpy, no copy of the frame: a year of bars is ten million rows)
    labelled = (pl.col(target).is_not_null() & pl.col(target).cast(pl.Float64).is_finite()).alias("_keep")
    mask = frame.select(labelled).to_series()
    dropped = frame.height - int(mask.sum())
    if dropped == frame.height:
        raise ConfigError(f"{source} has no rows with a target")

    def column(expr: pl.Expr) -> np.ndarray:
        return frame.select(expr).to_series().filter(mask).to_numpy()

    rows = write_rows(files, column(pl.col("_file_row")), features, Path(tmp.name) / "rows.parquet")
    if stream:  # stream numbers in order of first appearance (symbols may be categorical)
        symbols = frame.get_column(stream).filter(mask)
        firsts = symbols.unique(maintain_order=True)
        index: dict[str, int] = {s: i for i, s in enumerate(firsts.cast(pl.String).to_list())}
        stream_arr = symbols.replace_strict(firsts, list(range(len(index))), return_dtype=pl.Int32).to_numpy()
        del symbols
    else:
        index = {"all": 0}
        stream_arr = np.zeros(frame.height - dropped, dtype=np.int32)
    row_t = column(pl.col(ts).dt.epoch("ns")) if ts else np.arange(frame.height, dtype=np.int64)[mask.to_numpy()]
    y = column(pl.col(target).cast(pl.Float64))
    if prices is not None:
        prices = prices.filter(pl.col("symbol").is_in(list(index)))
        p_t = (prices["ts"].dt.epoch("ns") if timed else prices["ts"]).to_numpy()
    # the periods: the distinct times of the rows and of the prices they are marked to, in order
    times = np.unique(np.concatenate([row_t, p_t]) if prices is not None else row_t) if timed else None
    period = np.searchsorted(times, row_t).astype(np.int64) if times is not None else row_t.astype(np.int64)
    ds = Dataset(
        source,
        rows,
        y,
        stream_arr,
        list(index),
        row_t if ts else None,
        features=features,
        dropped=dropped,
        period=period,
        clock=period if by_bar else None,
        scratch=tmp,
        **kw,
    )
    if prices is not None:
        p_stream = np.asarray([index[s] for s in prices["symbol"].to_list()], dtype=np.int64)
        p_period = np.searchsorted(times, p_t) if times is not None else p_t.astype(np.int64)
        ds.tape = tape_from_prices(p_stream, p_period, prices["close"].to_numpy(), times)
        ds.trades_on = "the bars' closes" if by_bar else f"--price {price_name}"
    elif ds.hold == 1 and returns != "none":
        ds.tape = _returns_tape(stream_arr, period, y, returns, times)
        ds.trades_on = f"the target as the next row's {returns} return"
    else:
        ds.no_trading = (
            "the target is not a return: give --price COLUMN, or --returns if the target is the next row's return"
            if ds.hold == 1
            else f"labels are {ds.hold} rows ahead: give --price COLUMN to mark positions to market row by row"
        )
    if ds.tape is not None:
        width = int(max(ds.tape.period.max(), period.max())) + 1
        # (int64: streams x periods exceed int32 for a year of minute bars of 100 symbols)
        rows_at = stream_arr.astype(np.int64) * width + period
        ds.point = np.searchsorted(ds.tape.stream * width + ds.tape.period, rows_at)
    return ds


def _returns_tape(
    stream: np.ndarray, period: np.ndarray, y: np.ndarray, returns: str, period_ns: np.ndarray | None
) -> Tape:
    """A tape from targets that are the next row's return: a point per row, and one more per
    stream after its last row, the step into each point earning the previous row's target."""
    import numpy as np

    simple = {"log": np.expm1(y), "simple": y, "percent": y / 100.0}[returns]
    after = int(period.max()) + 1
    p_stream, p_period, p_ret = [], [], []
    for s in np.unique(stream):
        at = np.flatnonzero(stream == s)
        p_stream.append(np.full(len(at) + 1, s))
        p_period.append(np.concatenate([period[at], [after]]))
        p_ret.append(np.concatenate([[0.0], simple[at]]))
    if period_ns is not None and len(period_ns):
        step = int(np.median(np.diff(period_ns))) if len(period_ns) > 1 else 1
        period_ns = np.concatenate([period_ns, [period_ns[-1] + step]])
    return Tape(np.concatenate(p_stream), np.concatenate(p_period).astype(np.int64), np.concatenate(p_ret), period_ns)


# -- the replay ---------------------------------------------------------------------------------


@dataclass
class Replay:
    """One model's predictions per refresh interval, and where ADWIN found drift."""

    model: str
    kind: str
    preds: dict[str, np.ndarray]  # float64 per row (per row of `streams`, when a job has only some)
    drift_rows: list[int]
    learned: int
    seconds: float
    streams: tuple[int, ...] | None = None  # the streams replayed; None: all


class Stopped(RtmlError):
    """Ctrl-C or SIGTERM during a backtest: nothing is written."""


def replay(
    ds: Dataset,
    model: str,
    refresh: list[int | None],
    warmup: int,
    params: dict[str, Any] | None = None,
    stop: Event | None = None,
    progress: Callable[[int], None] | None = None,
    by_symbol: bool = False,
    streams: tuple[int, ...] | None = None,
) -> Replay:
    """Predict every row, learn each label when it is due, for every serving refresh interval
    in `refresh` (only those). `progress` is told the row reached now and then.

    `by_symbol`: each stream has a model of its own, which learns only that stream's rows
    (its serving copies and frozen model are its own too; refreshes and the warm-up still
    count the rows, or bars, of all streams, so they happen at the same moments as with one
    model). `streams`: replay only these streams' rows (a job's share, with `by_symbol`)."""
    spec = resolve(model)
    if spec.kind == CLASSIFIER and ds.target_kind != CLASSIFIER:
        raise ConfigError(f"{spec.name} is a classifier; backtest it on sign targets (`rtml features --target sign`)")
    if spec.kind != CLASSIFIER and ds.target_kind == CLASSIFIER:
        raise ConfigError(
            f"the examples have --target sign; {spec.name} is a regressor: use logistic, hat-clf or arf-clf"
        )
    started = time.perf_counter()

    import numpy as np

    def build() -> Any:
        return spec.build(params)

    kind = spec.kind
    n_streams = len(ds.stream_names)
    if streams is not None and len(streams) == n_streams:
        streams = None
    part = _Part(ds, streams, by_symbol, warmup)
    # a Learner per slot: one for all streams, or one per stream (by_symbol)
    learners = [
        Learner(build(), kind, build, window=0) if s in part.slots else None  # scored from the predictions afterwards
        for s in range(n_streams if by_symbol else 1)
    ]
    # (8 bytes a prediction: a Python list of floats would take 32)
    live = array("d")
    stale: list[tuple[int, array]] = [(r, array("d")) for r in refresh if r not in (1, NEVER)]
    drift_rows: list[int] = []
    frozen_at: list[_PredictRest] = []
    only_frozen = refresh == [NEVER]  # then learning stops at the end of the warm-up
    frozen_too = NEVER in refresh  # (a job of other intervals leaves the frozen model to another)
    try:
        _replay_rows(
            learners,
            part,
            kind,
            ds,
            warmup,
            live,
            stale,
            drift_rows,
            frozen_at,
            stop,
            only_frozen,
            progress,
            frozen_too,
        )
        frozen = frozen_at[0].result() if frozen_at else np.empty(0) if frozen_too else None
    except BaseException:
        for f in frozen_at:
            f.abandon()
        raise
    preds = {"1": np.frombuffer(live, dtype=np.float64), **{str(r): np.frombuffer(p) for r, p in stale}}
    if frozen is not None:
        preds["never"] = np.concatenate([np.frombuffer(live, dtype=np.float64, count=part.before), frozen])
    return Replay(
        model,
        kind,
        {refresh_label(r): preds[refresh_label(r)] for r in refresh},
        drift_rows,
        sum(learner.learned for learner in learners if learner is not None),
        time.perf_counter() - started,
        streams,
    )


class _Part:
    """The rows one replay goes through: all, or those of some streams; and which model
    (slot) each stream's rows use: the one model, or their stream's own (by_symbol)."""

    def __init__(self, ds: Dataset, streams: tuple[int, ...] | None, by_symbol: bool, warmup: int):
        import numpy as np

        self.mask = None if streams is None else np.isin(ds.stream, streams)
        self.index = None if self.mask is None else np.flatnonzero(self.mask)  # its rows' numbers
        self.owner = list(range(len(ds.stream_names))) if by_symbol else [0] * len(ds.stream_names)
        self.slots = {self.owner[s] for s in (range(len(ds.stream_names)) if streams is None else streams)}
        # its rows before the warm-up's end, and its first row after it (-1: none), where the frozen model is taken
        self.before = min(warmup, ds.n) if self.index is None else int(np.searchsorted(self.index, warmup))
        if self.index is None:
            self.first_scored = self.before if self.before < ds.n else -1
        else:
            self.first_scored = int(self.index[self.before]) if self.before < len(self.index) else -1

    def of(self, values: np.ndarray) -> np.ndarray:
        """`values` (one per row of the dataset) of this part's rows."""
        return values if self.mask is None else values[self.mask]


def _replay_rows(
    learners: list[Learner | None],
    part: _Part,
    kind: str,
    ds: Dataset,
    warmup: int,
    live: array,
    stale: list[tuple[int, array]],
    drift_rows: list[int],
    frozen_at: list[_PredictRest],
    stop: Event | None = None,
    only_frozen: bool = False,
    progress: Callable[[int], None] | None = None,
    frozen_too: bool = True,
) -> None:
    """The replay's loop, row by row: see `replay`. The inputs are streamed from disk; a row
    whose label is not yet due keeps its input in `pending` (at most `delay` per stream).
    `only_frozen`: the frozen model is all that is wanted, so the loop ends at the warm-up."""
    owner = part.owner
    serving: list[list[Any]] = [[None] * len(stale) for _ in learners]  # per slot
    block = [[-1] * len(stale) for _ in learners]  # the refresh period each serving copy is from
    clock = ds.clock.tolist() if ds.clock is not None else range(ds.n)
    pending: list[deque[tuple[dict[str, float], float, float]]] = [deque() for _ in ds.stream_names]
    delay = ds.delay
    frozen_row = part.first_scored if frozen_too else -1
    check = 0  # the row from which to look at `stop` and report progress again
    numbers = range(ds.n) if part.index is None else _pieces(part.index)
    # labels and streams as Python numbers (what River is fastest with), a chunk at a time
    for i, x, y_i, s_i in zip(
        numbers, ds.rows.iter(0, part.mask), _pieces(part.of(ds.y)), _pieces(part.of(ds.stream)), strict=True
    ):
        if i >= check:
            check = i + 1024
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped by a signal at row {i:,} of {ds.n:,}; nothing was written")
            if progress is not None:
                progress(i)
        slot = owner[s_i]
        learner = learners[slot]
        assert learner is not None
        if i == frozen_row:  # the models as they are now serve the rest of the rows: the frozen baseline
            frozen_at.append(_PredictRest([m.model if m else None for m in learners], part, kind, ds, i, progress))
            if only_frozen:
                return
        y_pred = predict_value(learner.model, kind, x)  # what Learner.predict does, one call less
        live.append(y_pred)
        for k, (every, preds) in enumerate(stale):
            if i < warmup:  # like the frozen model, a served copy starts at the end of the warm-up
                preds.append(y_pred)
                continue
            period = (clock[i] - clock[warmup]) // every
            if period != block[slot][k]:  # a new period: the serving copy is refreshed from the learner
                block[slot][k] = period
                serving[slot][k] = copy.deepcopy(learner.model)
            preds.append(predict_value(serving[slot][k], kind, x))
        if delay == 0:  # the label is known at once
            if learner.learn(x, y_i, y_pred):
                drift_rows.append(i)
            continue
        queue = pending[s_i]
        queue.append((x, y_i, y_pred))
        if len(queue) > delay:  # this row's stream has predicted `delay` rows since that row: its label is due
            xj, yj, pj = queue.popleft()
            if learner.learn(xj, yj, pj):
                drift_rows.append(i)


def _pieces(values: np.ndarray, size: int = 65_536) -> Iterator[Any]:
    """The values one by one as Python numbers, converted a chunk at a time."""
    for at in range(0, len(values), size):
        yield from values[at : at + size].tolist()


class _PredictRest:
    """Predictions of a part's rows from row `start` on by `models` (one per slot) as they
    are now, while the caller goes on learning.

    With a second core, a forked child holds the models as they were (copy-on-write: no copy
    made), predicts, and sends the numbers back through a pipe, so the frozen baseline costs
    the replay little; the result is the same as predicting here, now.
    """

    def __init__(
        self,
        models: list[Any],
        part: _Part,
        kind: str,
        ds: Dataset,
        start: int,
        progress: Callable[[int], None] | None = None,
    ):
        import numpy as np

        only = None if part.mask is None else part.mask[start:]
        self.n = ds.n - start if only is None else int(np.count_nonzero(only))
        self.pid = None

        def predictions() -> Iterator[float]:
            rows = ds.rows.iter(start, part.mask)
            if len(models) == 1:  # one model for every row
                model = models[0]
                return (predict_value(model, kind, x) for x in rows)
            owner, streams = part.owner, _pieces(ds.stream[start:] if only is None else ds.stream[start:][only])
            return (predict_value(models[owner[s]], kind, x) for x, s in zip(rows, streams, strict=True))

        if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
            self.preds = array("d")
            for k, p in enumerate(predictions()):
                self.preds.append(p)
                if progress is not None and k & 1023 == 0:
                    progress(start + k)
            return
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: predict, send, and leave without running the parent's exit handlers
            code = 1
            try:
                os.close(read_fd)
                # (the rows are read with pyarrow alone: polars' threads do not survive a fork)
                data = memoryview(array("d", predictions()).tobytes())
                while data:
                    data = data[os.write(write_fd, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid, self.pipe = pid, os.fdopen(read_fd, "rb")

    def result(self) -> np.ndarray:
        import numpy as np

        if self.pid is None:
            return np.frombuffer(self.preds, dtype=np.float64)
        with self.pipe:
            data = self.pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if status != 0 or len(data) != 8 * self.n:
            raise RtmlError("the process predicting with the frozen model failed; run the backtest again")
        return np.frombuffer(data, dtype=np.float64)

    def abandon(self) -> None:
        """The replay failed or was interrupted: stop the child and collect it."""
        if self.pid is not None:
            import signal

            os.kill(self.pid, signal.SIGKILL)
            self.pipe.close()
            os.waitpid(self.pid, 0)
            self.pid = None


def persistence(ds: Dataset) -> np.ndarray:
    """The naive baseline: the newest target of the row's stream that is known by then, i.e.
    the target `delay` + 1 rows back in the stream (0 before there is one)."""
    import polars as pl

    frame = pl.DataFrame({"y": ds.y, "stream": ds.stream})
    return frame.select(pl.col("y").shift(ds.delay + 1).over("stream").fill_null(0.0)).to_series().to_numpy()


# -- scores -------------------------------------------------------------------------------------


RANK_CHUNK = 1 << 20  # rows scored (and ranked, past the sort) at a time


def score(
    y: np.ndarray, pred: np.ndarray, zero_mae: float | None, y_ranks: np.ndarray | None = None
) -> dict[str, float | None]:
    """Error and ranking metrics of predictions `pred` of targets `y`. Sums are taken a
    chunk (RANK_CHUNK) of rows at a time (no temporary array as long as the rows); `y_ranks`:
    `centred_ranks(y)`, when the caller scores many predictions of the same targets."""
    import numpy as np

    n = len(y)
    if n == 0:
        return {"n": 0}
    y_mean = float(np.mean(y))
    abs_err = sq_err = sst = 0.0
    hits = nonzero = 0
    chunk = RANK_CHUNK
    for at in range(0, n, chunk):
        t, p = y[at : at + chunk], pred[at : at + chunk]
        err = p - t
        abs_err += float(np.abs(err).sum())
        sq_err += float(err @ err)
        err = t - y_mean
        sst += float(err @ err)
        # same sign, and neither 0 (a zero prediction, or NaN, is a miss; a zero target is left out)
        hits += int(np.count_nonzero(((p > 0) & (t > 0)) | ((p < 0) & (t < 0))))
        nonzero += int(np.count_nonzero(t))
    mae = abs_err / n
    return {
        "n": n,
        "mae": _finite(mae),
        "rmse": _finite(math.sqrt(sq_err / n)),
        "r2": _finite(1 - sq_err / sst) if sst > 0 else None,
        "mae_vs_zero": _finite(mae / zero_mae) if zero_mae else None,
        "hit_rate": hits / nonzero if nonzero else None,
        "ic": _spearman(pred, y if y_ranks is None else y_ranks, y_ranks is not None),
    }


def _ranked_chunks(a: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their average ranks less the mean rank (n + 1) / 2), a chunk of `a` in sorted
    order at a time. Memory: the sort order, a flag per row and a number per distinct
    value; no array of ranks as long as `a` (ten million rows would need several)."""
    import numpy as np

    n, chunk = len(a), RANK_CHUNK
    order = np.argsort(a, kind="stable")
    new = np.ones(n, dtype=bool)  # where a run of equal values starts, in sorted order
    for at in range(1, n, chunk):
        sorted_ = a[order[at - 1 : at + chunk]]
        np.not_equal(sorted_[1:], sorted_[:-1], out=new[at : at + chunk])
    starts = np.flatnonzero(new)
    del new
    ends = np.append(starts[1:], n)
    mean_rank = (starts + ends + 1) / 2 - (n + 1) / 2  # ranks start..end-1 + 1, averaged, centred
    for at in range(0, n, chunk):
        group = np.searchsorted(starts, np.arange(at, min(at + chunk, n)), side="right") - 1
        yield order[at : at + chunk], mean_rank[group]


def centred_ranks(a: np.ndarray) -> np.ndarray:
    """The average ranks of `a` (ties share the mean of their ranks), less their mean (n + 1) / 2."""
    import numpy as np

    out = np.empty(len(a))
    for rows, ranks in _ranked_chunks(a):
        out[rows] = ranks
    return out


def _spearman(a: np.ndarray, b: np.ndarray, b_ranked: bool = False) -> float | None:
    """Spearman's rank correlation: Pearson's of the average ranks (`b` may come ranked
    already, by `centred_ranks`)."""
    import numpy as np

    if len(a) < 3 or not np.all(np.isfinite(a)):
        return None
    rb = b if b_ranked else centred_ranks(b)
    sab = saa = 0.0
    for rows, ranks in _ranked_chunks(a):
        sab += float(ranks @ rb[rows])
        saa += float(ranks @ ranks)
    sbb = float(rb @ rb)
    if saa == 0 or sbb == 0:
        return None
    return sab / math.sqrt(saa * sbb)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def trade(
    ds: Dataset, pred: np.ndarray, start: int, fee_bps: float, band: float, always_long: bool = False
) -> tuple[dict[str, Any], Book | None]:
    """The sign strategy on `pred` from row `start` on, marked to market (see `trading`):
    its summary at `fee_bps` (with the fee ladder and the Sharpe ratio's interval), and the
    book for charts. Empty when the data gives nothing to mark positions to."""
    import numpy as np

    if ds.tape is None:
        return {}, None
    assert ds.point is not None  # a dataset with a tape has each row's point on it
    direction = np.full(len(ds.tape.ret), np.nan)
    direction[ds.point[start:]] = 1.0 if always_long else directions(np.asarray(pred[start:]), band)
    book = mark(ds.tape, direction, ds.hold, (fee_bps, *FEE_LADDER_BPS), always_long)
    summary = summarize(book, ds.periods_per_year)
    if summary["sharpe"] is not None:
        summary.update(stats.sharpe_interval(book.returns(0), ds.periods_per_year))
    return summary, book


def period_times(ds: Dataset, periods: np.ndarray) -> np.ndarray:
    """The time of each period number (extrapolated past the last known one), for charts;
    the period numbers themselves when the data has no times."""
    import numpy as np

    known = ds.tape.period_ns if ds.tape is not None and ds.tape.period_ns is not None else None
    if known is None or len(known) == 0:
        return periods
    step = int(np.median(np.diff(known))) if len(known) > 1 else 1
    at = np.minimum(periods, len(known) - 1)
    out = known[at] + (periods - at) * step
    return out.astype("datetime64[ns]")


def divergence_bounds(ds: Dataset) -> np.ndarray:
    """Per row, the largest |prediction| the live `Learner` takes as sane when the row is
    predicted: DIVERGENCE_FACTOR times the mean absolute target known by then (infinite
    before MIN_TARGETS are). Computed in place: ten million rows are 80 MB an array."""
    import numpy as np

    known_at = np.arange(ds.n)  # the row after which each label is known
    if ds.delay:
        for s in range(len(ds.stream_names)):
            at = np.flatnonzero(ds.stream == s)
            known_at[at] = np.concatenate([at[ds.delay :], np.full(min(ds.delay, len(at)), ds.n)])
    valid = known_at < ds.n
    after = known_at[valid]
    after += 1
    del known_at
    size = np.zeros(ds.n + 1)
    np.add.at(size, after, np.abs(ds.y[valid]))
    count = np.zeros(ds.n + 1)
    np.add.at(count, after, 1)
    del after, valid
    np.cumsum(size, out=size)  # targets known before row i is predicted
    np.cumsum(count, out=count)
    bound, count = size[:-1], count[:-1]
    sane = (count >= MIN_TARGETS) & (bound > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound *= DIVERGENCE_FACTOR
        bound /= count
    bound[~sane] = np.inf
    return bound


def diverged_at(bound: np.ndarray, pred: np.ndarray, start: int) -> int | None:
    """The first row from `start` on whose prediction is not finite or is beyond its
    `divergence_bounds`, or None."""
    import numpy as np

    p = np.asarray(pred, dtype=np.float64)
    bad = np.flatnonzero(~(np.abs(p[start:]) <= bound[start:]))
    return int(bad[0]) + start if len(bad) else None


# -- the whole run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One process's share of a backtest: a model, the refresh intervals it serves, and
    (with --by-symbol) the streams whose models it learns."""

    model: str
    refresh: tuple[int | None, ...]
    streams: tuple[int, ...] | None = None  # None: every stream
    symbols: str = ""  # the streams' names, for the progress bar

    @property
    def label(self) -> str:
        of = f", {self.symbols}" if self.symbols else ""
        return f"{self.model} (refresh {', '.join(refresh_label(r) for r in self.refresh)}{of})"


def plan_jobs(opts: BacktestOptions, names: list[str] | None = None, sizes: list[int] | None = None) -> list[Job]:
    """A job per model; with --by-symbol and more --jobs than models, each model's streams
    (`names`, of `sizes` rows) are split among jobs of about equal rows (independent work:
    no row is learned twice). Beyond that, the refresh intervals of the models with the
    most are split among more jobs (each of them learns the model again: it is parallel,
    not less work; a job of only `never` learns just the warm-up)."""
    groups: list[tuple[int, ...] | None] = [None]
    if opts.by_symbol and names and sizes and opts.jobs > len(opts.models):
        count = min(len(names), -(-opts.jobs // len(opts.models)))
        load = [0] * count
        members: list[list[int]] = [[] for _ in range(count)]
        for s in sorted(range(len(names)), key=lambda s: -sizes[s]):  # the biggest first, each to the lightest
            g = load.index(min(load))
            members[g].append(s)
            load[g] += sizes[s]
        groups = [tuple(sorted(m)) for m in members] if count > 1 else [None]

    def symbols(group: tuple[int, ...] | None) -> str:
        if group is None or names is None:
            return ""
        shown = ", ".join(names[s] for s in group[:3])
        return shown + (f" +{len(group) - 3}" if len(group) > 3 else "")

    jobs = [Job(m, tuple(opts.refresh), g, symbols(g)) for m in opts.models for g in groups]
    while len(jobs) < opts.jobs:
        k = max(range(len(jobs)), key=lambda i: len(jobs[i].refresh))
        j = jobs[k]
        if len(j.refresh) < 2:
            break
        half = len(j.refresh) // 2
        jobs[k : k + 1] = [
            Job(j.model, j.refresh[:half], j.streams, j.symbols),
            Job(j.model, j.refresh[half:], j.streams, j.symbols),
        ]
    return jobs


def _merge(parts: list[Replay], opts: BacktestOptions, ds: Dataset) -> Replay:
    """A model's replay from its jobs' (each learned its streams the same way), in --refresh order."""
    import numpy as np

    by_streams: dict[tuple[int, ...] | None, Replay] = {}
    for p in parts:  # per set of streams, one that replayed every row, if any did
        if p.streams not in by_streams or p.learned > by_streams[p.streams].learned:
            by_streams[p.streams] = p
    preds: dict[str, np.ndarray] = {}
    for p in parts:
        rows = None if p.streams is None else np.isin(ds.stream, p.streams)  # the rows its arrays hold
        for label, pred in p.preds.items():
            if rows is None:
                preds[label] = pred
            else:
                preds.setdefault(label, np.full(ds.n, np.nan))[rows] = pred
    first = parts[0]
    return Replay(
        first.model,
        first.kind,
        {refresh_label(r): preds[refresh_label(r)] for r in opts.refresh},
        sorted(i for p in by_streams.values() for i in p.drift_rows),
        sum(p.learned for p in by_streams.values()),
        max(p.seconds for p in parts),
    )


def _replay_job(args: tuple) -> tuple[int, Replay]:
    k, job, warmup, params, by_symbol = args
    assert _JOB_DATA is not None  # the parent set it before forking
    done = _JOB_PROGRESS

    def progress(i: int) -> None:
        if done is not None:
            done[k] = i

    data = _JOB_DATA
    return k, replay(data, job.model, list(job.refresh), warmup, params, None, progress, by_symbol, job.streams)


def _worker_signals() -> None:
    """A replay worker leaves Ctrl-C to the parent, which stops the pool; the pool's
    terminate() (SIGTERM) ends it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_JOB_DATA: Dataset | None = None  # the dataset, inherited by forked workers instead of pickled
_JOB_PROGRESS: Any = None  # rows done per job, in memory shared with the forked workers


def check_models(opts: BacktestOptions) -> None:
    """Unknown models and parameters they do not take are errors before any data is read."""
    if len(set(opts.models)) != len(opts.models):
        raise ConfigError(f"--model values repeat: {', '.join(opts.models)}")
    for m in opts.models:
        resolve(m).build(opts.params)


def run_backtest(ds: Dataset, opts: BacktestOptions, stop: Event | None = None) -> dict[str, Any]:
    """Replay every model (in `opts.jobs` processes), then score all against the baselines.
    `stop` (Ctrl-C, SIGTERM) ends it within about a second with `Stopped`."""
    started = time.perf_counter()
    return result_of(ds, opts, list(replay_all(ds, opts, stop)), time.perf_counter() - started)


def replay_all(
    ds: Dataset,
    opts: BacktestOptions,
    stop: Event | None = None,
    progress: Callable[[list[Job], list[int]], None] | None = None,
) -> Iterator[Replay]:
    """The stage: replay every model (the jobs of `plan_jobs`, in `opts.jobs` processes),
    yielding each model's replay as its last job ends; `progress(jobs, rows done by each)` is
    called now and then. `stop` (Ctrl-C, SIGTERM) ends it within about a second with `Stopped`."""
    check_models(opts)
    if opts.warmup >= ds.n:
        raise ConfigError(f"--warmup {opts.warmup} leaves none of the {ds.n:,} rows to score; lower it")
    if opts.by_symbol and ds.stream_names == ["all"]:
        raise ConfigError("--by-symbol needs a symbol column in the --table: there is one stream of rows")
    import numpy as np

    sizes = np.bincount(ds.stream, minlength=len(ds.stream_names)).tolist()
    jobs = plan_jobs(opts, ds.stream_names, sizes)
    parts: dict[str, list[Replay]] = {m: [] for m in opts.models}
    left = {m: sum(j.model == m for j in jobs) for m in opts.models}

    def finished(rep: Replay) -> Iterator[Replay]:
        parts[rep.model].append(rep)
        if len(parts[rep.model]) == left[rep.model]:
            yield _merge(parts[rep.model], opts, ds)

    if opts.jobs > 1 and len(jobs) > 1:
        import multiprocessing

        global _JOB_DATA, _JOB_PROGRESS
        ctx = multiprocessing.get_context("fork")
        _JOB_DATA, _JOB_PROGRESS = ds, ctx.Array("q", len(jobs), lock=False)
        try:
            with ctx.Pool(min(opts.jobs, len(jobs)), initializer=_worker_signals) as pool:
                args = [(k, job, opts.warmup, opts.params, opts.by_symbol) for k, job in enumerate(jobs)]
                results = pool.imap_unordered(_replay_job, args)
                ended: set[int] = set()
                while len(ended) < len(jobs):
                    if progress is not None:
                        progress(jobs, [ds.n if k in ended else _JOB_PROGRESS[k] for k in range(len(jobs))])
                    try:
                        k, rep = results.next(timeout=0.2)
                    except multiprocessing.TimeoutError:
                        if stop is not None and stop.is_set():
                            pool.terminate()
                            raise Stopped("stopped by a signal; nothing was written") from None
                        continue
                    ended.add(k)
                    if len(ended) == len(jobs) and progress is not None:
                        progress(jobs, [ds.n] * len(jobs))
                    yield from finished(rep)
        finally:
            _JOB_DATA, _JOB_PROGRESS = None, None
    else:
        done = [0] * len(jobs)
        for k, job in enumerate(jobs):

            def report(i: int, k: int = k) -> None:
                done[k] = i
                if progress is not None:
                    progress(jobs, done)

            rep = replay(
                ds, job.model, list(job.refresh), opts.warmup, opts.params, stop, report, opts.by_symbol, job.streams
            )
            done[k] = ds.n
            if progress is not None:
                progress(jobs, done)
            yield from finished(rep)


def result_of(ds: Dataset, opts: BacktestOptions, replays: list[Replay], elapsed_s: float) -> dict[str, Any]:
    """The backtest's result: every replay scored against the baselines, with its timings."""
    replays = sorted(replays, key=lambda r: opts.models.index(r.model))  # (jobs end in any order)
    result = score_all(ds, opts, replays)
    result["model_seconds"] = {r.model: round(r.seconds, 3) for r in replays}
    result["elapsed_s"] = round(elapsed_s, 3)
    return result


def score_all(ds: Dataset, opts: BacktestOptions, replays: list[Replay]) -> dict[str, Any]:
    """Every model and refresh interval against the baselines: accuracy, trading marked to
    market, and how much to believe each figure."""
    import numpy as np

    from rtml_cli import __version__

    w = opts.warmup
    y = ds.y[w:]
    periods = ds.periods[w:]
    zero = np.broadcast_to(np.float64(0.0), ds.n)  # (no memory: every row reads the one zero)
    naive = persistence(ds)
    bound = divergence_bounds(ds)
    y_abs = np.abs(y)  # the zero baseline's loss, and the scale of everything
    zero_mae = float(np.mean(y_abs)) or None
    y_ranks = centred_ranks(y) if len(y) >= 3 else None
    rows: list[dict[str, Any]] = []
    books: dict[tuple[str, str], Book] = {}
    frozen = {rep.model: np.asarray(rep.preds["never"]) for rep in replays}

    def add(model: str, refresh: str, pred: np.ndarray, baseline: bool, **extra: Any) -> None:
        row = {"model": model, "refresh": refresh, "baseline": baseline, **score(y, pred[w:], zero_mae, y_ranks)}
        trading, book = trade(ds, pred, w, opts.fee_bps, opts.band)
        row.update(trading)
        if book is not None:
            books[model, refresh] = book
        if np.any(pred[w:] != 0):
            row["hit_p"] = stats.hit_rate_test(pred[w:], y, periods, ds.hold)
            vs_zero = stats.diebold_mariano(np.abs(pred[w:] - y), y_abs, periods, ds.hold)
            row["vs_zero_mae_diff"], row["vs_zero_p"] = vs_zero["diff"], vs_zero["p"]
        if model in frozen and refresh != "never":
            vs = stats.diebold_mariano(np.abs(pred[w:] - y), np.abs(frozen[model][w:] - y), periods, ds.hold)
            row["vs_frozen_mae_diff"], row["vs_frozen_p"] = vs["diff"], vs["p"]
        row["diverged_at_row"] = diverged_at(bound, pred, w) if model not in ("zero", "persistence") else None
        rows.append({**row, **extra})

    add("zero", "-", zero, True)
    add("persistence", "-", naive, True)
    for rep in replays:
        for label, pred in rep.preds.items():
            extra = {"drifts": len(rep.drift_rows)} if label == "1" else {}
            add(rep.model, label, np.asarray(pred), label == "never", **extra)
    hold, hold_book = trade(ds, zero, w, opts.fee_bps, opts.band, always_long=True)
    if hold_book is not None:
        books["buy and hold", "-"] = hold_book
    scored_ts = ds.ts[w:] if ds.ts is not None else None
    result = {
        "rtml": __version__,
        "source": ds.source,
        "rows": ds.n,
        "scored_rows": ds.n - w,
        "scored_periods": len(np.unique(periods)),
        "scored_from": _iso(int(scored_ts.min())) if scored_ts is not None else None,
        "scored_to": _iso(int(scored_ts.max())) if scored_ts is not None else None,
        "rows_without_target": ds.dropped,
        "streams": len(ds.stream_names),
        "symbols": ds.stream_names,
        "features": ds.features,
        "models": {rep.model: {"kind": rep.kind, "params": _params_doc(rep.model, opts.params)} for rep in replays},
        "model_per_symbol": opts.by_symbol,
        "label_delay_rows": ds.delay,
        "holding_rows": ds.hold,
        "warmup": w,
        "refresh": [refresh_label(r) for r in opts.refresh],
        "refresh_unit": "rows" if ds.clock is None else "bars",
        "fee_bps": opts.fee_bps,
        "fee_ladder_bps": list(FEE_LADDER_BPS),
        "band": opts.band,
        "trades_on": ds.trades_on,
        "no_trading": ds.no_trading,
        "periods_per_year": ds.periods_per_year,
        "results": rows,
        "buy_and_hold": hold or None,
        "by_symbol": by_symbol(ds, w, replays, books, zero_mae is not None),
        "drift_rows": {r.model: r.drift_rows for r in replays},
        "_replays": replays,
        "_baselines": {"zero": zero, "persistence": naive},
        "_books": books,
    }
    result["warnings"] = caveats(result, ds)
    return result


def _iso(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def _params_doc(model: str, params: dict[str, Any]) -> dict[str, Any]:
    import json

    spec = resolve(model)
    return json.loads(json.dumps({**spec.defaults, **params}, default=str))


def by_symbol(
    ds: Dataset, w: int, replays: list[Replay], books: dict[tuple[str, str], Book], scorable: bool
) -> list[dict[str, Any]]:
    """Per symbol: the live and frozen models and buy-and-hold, on that symbol's scored rows."""
    import numpy as np

    stream = np.asarray(ds.stream[w:])
    y = ds.y[w:]
    out = []
    for s, name in enumerate(ds.stream_names):
        mine = stream == s
        if not mine.any():
            continue
        zero_mae = float(np.mean(np.abs(y[mine]))) or None
        series = [("buy and hold", "-", None)] + [
            (rep.model, label, np.asarray(rep.preds[label])[w:]) for rep in replays for label in ("1", "never")
        ]
        for model, label, pred in series:
            row: dict[str, Any] = {"symbol": name, "model": model, "refresh": label, "rows": int(mine.sum())}
            if pred is not None and scorable:
                m = score(y[mine], pred[mine], zero_mae)
                row.update({k: m[k] for k in ("mae", "mae_vs_zero", "hit_rate", "ic")})
            book = books.get((model, label))
            if book is not None:
                row["total_return"] = book.stream_returns.get(s)
            out.append(row)
    return out


# Bounds beyond which a result on market returns is a leak until shown otherwise.
TOO_GOOD = {"r2": ("R²", 0.5), "hit_rate": ("hit rate", 0.75), "ic": ("|IC|", 0.5)}


def caveats(result: dict[str, Any], ds: Dataset) -> list[str]:
    """What a reader of these figures must know before believing them."""
    out = []
    n = result["scored_rows"]
    span_s = None
    if result["scored_from"] is not None and ds.ts is not None:
        span_s = (ds.ts[result["warmup"] :].max() - ds.ts[result["warmup"] :].min()) / 1e9
    if ds.tape is not None and (n < 1_000 or (span_s is not None and span_s < 86_400)):
        span = f"{_duration(span_s)} of data and " if span_s is not None else ""
        out.append(
            f"annualised figures (Sharpe ratios) rest on {span}{n:,} scored rows: too little to annualise; "
            "read them, and their intervals, as noise"
        )
    length = result["scored_periods"] if result["refresh_unit"] == "bars" else n
    for label in result["refresh"]:
        if label not in ("1", "never") and int(label) >= length:
            out.append(
                f"refresh every {label} {result['refresh_unit']} is at least the {length:,} "
                f"{result['refresh_unit']} scored: the copy is never refreshed, the same as never"
            )
    for r in result["results"]:
        if r["baseline"] and r["refresh"] == "-":
            continue
        good = [
            f"{name} {r[k]:.3g}"
            for k, (name, bound) in TOO_GOOD.items()
            if r.get(k) is not None and (abs(r[k]) if k == "ic" else r[k]) > bound
        ]
        if good:
            out.append(
                f"{r['model']} (refresh {r['refresh']}): {', '.join(good)} is too good to be true for market "
                "returns: check the features for look-ahead (a feature computed from the target's own bars)"
            )
        if r.get("diverged_at_row") is not None:
            out.append(
                f"{r['model']} (refresh {r['refresh']}) diverged at row {r['diverged_at_row']:,}: a prediction "
                f"over {DIVERGENCE_FACTOR:,.0f}x the targets' mean size; its figures are of a broken model"
            )
    if ds.no_trading:
        out.append(f"no trading figures: {ds.no_trading}")
    return out


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 86_400 * 2:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"
