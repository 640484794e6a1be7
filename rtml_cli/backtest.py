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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml_cli.errors import ConfigError, RtmlError
from rtml_cli.features import read_build
from rtml_cli.learner import Learner, feature_columns, model_inputs, predict_value
from rtml_cli.log import OFFSET, ParquetLog
from rtml_cli.models import CLASSIFIER, resolve

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
    return sorted((r for r in out if r is not None)) + [NEVER]


def refresh_label(r: int | None) -> str:
    return "never" if r is None else str(r)


@dataclass
class Dataset:
    """The rows to replay, in order: model inputs, targets, streams and times."""

    source: str
    xs: list[dict[str, float]]
    y: np.ndarray
    stream: list[int]  # stream number per row; labels are delayed within a stream
    stream_names: list[str]
    ts: np.ndarray | None  # int64 ns, or None
    delay: int
    hold: int  # rows a position is held: the target's horizon
    returns: str  # what the target is, for trading: log | simple | percent | none
    periods_per_year: float
    features: list[str]
    target_kind: str = "regressor"
    dropped: int = 0  # rows without a target
    clock: list[int] | None = None  # what --refresh counts per row: bars for the examples log; None: rows

    @property
    def n(self) -> int:
        return len(self.xs)


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


# -- input --------------------------------------------------------------------------------------


def load_examples(data_dir: Path, opts: BacktestOptions) -> Dataset:
    """The examples log of a data directory: label delay and holding period = the horizon."""
    import polars as pl

    log = ParquetLog(data_dir, "examples")
    build = read_build(data_dir)
    if not log.root.is_dir() or build is None:
        raise ConfigError(f"there is no examples log in {data_dir}; run `rtml features` first, or give --table")
    horizon, bar_s, target = build.horizon, build.bar_s, build.target
    symbols = [s for s in log.partitions() if opts.symbols is None or s in opts.symbols]
    frames = [log.read_after(s) for s in symbols]
    frames = [f for f in frames if f.height]
    if not frames:
        raise ConfigError(f"the examples log in {data_dir} has no rows{' for --symbols' if opts.symbols else ''}")
    frame = pl.concat(frames, how="diagonal_relaxed").sort("ts", "symbol", OFFSET)
    frame = _between(frame, "ts", opts)
    returns = opts.returns or ("log" if target == "logret" else "none")
    # --refresh counts bars here (all symbols' rows of a bar share a serving copy), not rows
    ds = _dataset(frame, "target", "symbol", "ts", feature_columns(frame.columns), f"examples log of {data_dir}",
                  delay=horizon, hold=horizon, returns=returns, periods_per_year=opts.periods_per_year or YEAR_S / bar_s,
                  clock_by_ts=True)
    ds.target_kind = CLASSIFIER if target == "sign" else "regressor"
    return ds


def load_table(opts: BacktestOptions) -> Dataset:
    """A user's Parquet or CSV table: feature columns (every numeric column but the target and
    --ts) and a target; a `symbol` column, if there is one, makes each symbol a stream."""
    import polars as pl

    path = Path(opts.table)
    if not path.is_file():
        raise ConfigError(f"--table {path} is not a file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, try_parse_dates=True, infer_schema_length=10_000)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise ConfigError(f"cannot read --table {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                          "give a Parquet file or a CSV file with a header") from None
    if not opts.target:
        raise ConfigError("--table needs --target COLUMN: the column to predict")
    for name, col in (("--target", opts.target), ("--ts", opts.ts)):
        if col is not None and col not in frame.columns:
            raise ConfigError(f"{name} {col!r} is not a column of {path.name}; it has {', '.join(frame.columns[:30])}")
    if not frame[opts.target].dtype.is_numeric():
        raise ConfigError(f"--target {opts.target!r} is {frame[opts.target].dtype}, not numbers")
    if opts.ts is not None:
        if frame[opts.ts].dtype == pl.String:
            frame = frame.with_columns(pl.col(opts.ts).str.to_datetime(time_zone="UTC", strict=False))
        if not isinstance(frame[opts.ts].dtype, pl.Datetime) and frame[opts.ts].dtype != pl.Date:
            raise ConfigError(f"--ts {opts.ts!r} holds {frame[opts.ts].dtype}, not times")
        if frame[opts.ts].null_count():
            raise ConfigError(f"--ts {opts.ts!r} has {frame[opts.ts].null_count():,} rows without a readable time; "
                              "use ISO times like 2026-01-01T12:00:00")
        try:
            if frame[opts.ts].dtype == pl.Date:
                frame = frame.with_columns(pl.col(opts.ts).cast(pl.Datetime("us")))
            zoned = frame[opts.ts].dtype.time_zone is not None  # zoned times convert; naive ones are UTC
            frame = frame.with_columns(pl.col(opts.ts).dt.convert_time_zone("UTC") if zoned
                                       else pl.col(opts.ts).dt.replace_time_zone("UTC"))
            frame = frame.with_columns(pl.col(opts.ts).cast(pl.Datetime("ns", "UTC"))).sort(opts.ts, maintain_order=True)
        except pl.exceptions.PolarsError as exc:
            raise ConfigError(f"--ts {opts.ts!r} holds times rtml cannot use (years 1678-2261 only): "
                              f"{str(exc).splitlines()[0][:160]}") from None
        frame = _between(frame, opts.ts, opts)
    elif opts.start or opts.end:
        raise ConfigError("--from/--to need --ts COLUMN for a --table")
    stream = "symbol" if "symbol" in frame.columns else None
    if stream:
        if opts.ts is None:
            # in file order, a table sorted by symbol would learn one symbol's future before another's past
            raise ConfigError(f"{path.name} has a symbol column: give --ts COLUMN, so that rows are replayed in time order")
        frame = frame.with_columns(pl.col("symbol").cast(pl.String))
        if frame["symbol"].null_count():
            raise ConfigError(f"{path.name} has {frame['symbol'].null_count():,} rows without a symbol")
        if opts.symbols is not None:
            frame = frame.filter(pl.col("symbol").is_in(opts.symbols))
    elif opts.symbols is not None:
        raise ConfigError(f"--symbols needs a symbol column, and {path.name} has none")
    skip = {opts.target, opts.ts, stream}
    features = [c for c, t in frame.schema.items() if c not in skip and t.is_numeric()]
    if not features:
        raise ConfigError(f"{path.name} has no numeric feature columns besides the target")
    frame = frame.with_columns(pl.col(*features, opts.target).cast(pl.Float64))  # decimals and integers alike
    hold = max(opts.delay, 1)
    ppy = opts.periods_per_year or _periods_per_year(frame, opts.ts, stream) or 252.0
    return _dataset(frame, opts.target, stream, opts.ts, features, f"table {path}", delay=opts.delay, hold=hold,
                    returns=opts.returns or "none", periods_per_year=ppy)


def _between(frame: pl.DataFrame, ts: str, opts: BacktestOptions) -> pl.DataFrame:
    import polars as pl

    for bound, op in ((opts.start, "ge"), (opts.end, "lt")):
        if bound:
            try:
                when = pl.Series([bound]).str.to_datetime(time_zone="UTC").item()
            except Exception:  # noqa: BLE001
                raise ConfigError(f"{bound!r} is not a time; use e.g. 2026-01-01 or 2026-01-01T12:00") from None
            frame = frame.filter(getattr(pl.col(ts), op)(when))
    return frame


def _periods_per_year(frame: pl.DataFrame, ts: str | None, stream: str | None) -> float | None:
    """Rows per year of one stream, from its first and last times."""
    if ts is None or frame.height < 3:
        return None
    first = frame.filter(frame[stream] == frame[stream][0]) if stream else frame
    span = (first[ts].max() - first[ts].min()).total_seconds()
    return (first.height - 1) / (span / YEAR_S) if span > 0 else None


def _dataset(frame: pl.DataFrame, target: str, stream: str | None, ts: str | None, features: list[str],
             source: str, clock_by_ts: bool = False, **kw: Any) -> Dataset:
    import polars as pl

    keep = frame.filter(pl.col(target).is_not_null() & pl.col(target).cast(pl.Float64).is_finite())
    dropped = frame.height - keep.height
    if keep.height == 0:
        raise ConfigError(f"{source} has no rows with a target")
    xs = [x for x, _ in model_inputs(keep, features)]
    names = keep[stream].cast(pl.String).to_list() if stream else ["all"] * keep.height
    index: dict[str, int] = {}
    streams = [index.setdefault(s, len(index)) for s in names]
    tsv = keep[ts].dt.epoch("ns").to_numpy() if ts else None
    clock = keep.select(pl.col(ts).rank("dense") - 1).to_series().to_list() if clock_by_ts else None
    return Dataset(source, xs, keep[target].cast(pl.Float64).to_numpy(), streams, list(index), tsv,
                   features=features, dropped=dropped, clock=clock, **kw)


# -- the replay ---------------------------------------------------------------------------------


@dataclass
class Replay:
    """One model's predictions per refresh interval, and where ADWIN found drift."""

    model: str
    kind: str
    preds: dict[str, list[float]]
    drift_rows: list[int]
    learned: int
    seconds: float


def replay(ds: Dataset, model: str, refresh: list[int | None], warmup: int) -> Replay:
    """Predict every row, learn each label when it is due, for every serving refresh interval."""
    spec = resolve(model)
    if spec.kind == CLASSIFIER and ds.target_kind != CLASSIFIER:
        raise ConfigError(f"{spec.name} is a classifier; backtest it on sign targets (`rtml features --target sign`)")
    started = time.perf_counter()
    learner = Learner(spec.build(), spec.kind, spec.build, window=0)  # scored from the predictions afterwards
    kind = spec.kind
    live: list[float] = []
    stale = [(r, []) for r in refresh if r not in (1, NEVER)]
    drift_rows: list[int] = []
    frozen_at: list[_PredictRest] = []
    try:
        _replay_rows(learner, kind, ds, warmup, live, stale, drift_rows, frozen_at)
        frozen = frozen_at[0].result()
    except BaseException:
        for f in frozen_at:
            f.abandon()
        raise
    preds = {"1": live, **{str(r): p for r, p in stale}, "never": live[:warmup] + frozen}
    return Replay(model, kind, {refresh_label(r): preds[refresh_label(r)] for r in refresh}, drift_rows,
                  learner.learned, time.perf_counter() - started)


def _replay_rows(learner: Learner, kind: str, ds: Dataset, warmup: int, live: list[float],
                 stale: list[tuple[int, list[float]]], drift_rows: list[int], frozen_at: list[_PredictRest]) -> None:
    """The replay's loop, row by row: see `replay`."""
    serving = [None] * len(stale)
    block = [-1] * len(stale)  # the refresh period each serving copy is from
    clock = ds.clock or range(ds.n)
    pending = [deque() for _ in ds.stream_names]
    xs, y, stream, delay = ds.xs, ds.y.tolist(), ds.stream, ds.delay  # Python floats: what River is fastest with
    for i, x in enumerate(xs):
        if i == warmup:  # the model as it is now serves the rest of the rows: the frozen baseline
            frozen_at.append(_PredictRest(learner.model, kind, xs, warmup))
        y_pred = predict_value(learner.model, kind, x)  # what Learner.predict does, one call less
        live.append(y_pred)
        for k, (every, preds) in enumerate(stale):
            if i < warmup:  # like the frozen model, a served copy starts at the end of the warm-up
                preds.append(y_pred)
                continue
            period = (clock[i] - clock[warmup]) // every
            if period != block[k]:  # a new period: the serving copy is refreshed from the learner
                block[k] = period
                serving[k] = copy.deepcopy(learner.model)
            preds.append(predict_value(serving[k], kind, x))
        if delay == 0:  # the label is known at once
            if learner.learn(x, y[i], y_pred):
                drift_rows.append(i)
            continue
        queue = pending[stream[i]]
        queue.append(i)
        if len(queue) > delay:  # this row's stream has predicted `delay` rows since row j: its label is due
            j = queue.popleft()
            if learner.learn(xs[j], y[j], live[j]):
                drift_rows.append(i)


class _PredictRest:
    """Predictions of rows `start`.. by `model` as it is now, while the caller goes on learning.

    With a second core, a forked child holds the model as it was (copy-on-write: no copy
    made), predicts, and sends the numbers back through a pipe, so the frozen baseline costs
    the replay little; the result is the same as predicting here, now.
    """

    def __init__(self, model: Any, kind: str, xs: list[dict[str, float]], start: int):
        self.n = len(xs) - start
        self.pid = None
        if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
            self.preds = [predict_value(model, kind, x) for x in xs[start:]]
            return
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: predict, send, and leave without running the parent's exit handlers
            code = 1
            try:
                os.close(read_fd)
                data = memoryview(array("d", (predict_value(model, kind, x) for x in xs[start:])).tobytes())
                while data:
                    data = data[os.write(write_fd, data):]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid, self.pipe = pid, os.fdopen(read_fd, "rb")

    def result(self) -> list[float]:
        if self.pid is None:
            return self.preds
        with self.pipe:
            data = self.pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if status != 0 or len(data) != 8 * self.n:
            raise RtmlError("the process predicting with the frozen model failed; run the backtest again")
        return array("d", data).tolist()

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


def score(y: np.ndarray, pred: np.ndarray, zero_mae: float | None) -> dict[str, float | None]:
    """Error and ranking metrics of predictions `pred` of targets `y`."""
    import numpy as np

    err = pred - y
    n = len(y)
    if n == 0:
        return {"n": 0}
    mae = float(np.mean(np.abs(err)))
    sst = float(np.sum((y - y.mean()) ** 2))
    nz = y != 0
    hits = (np.sign(pred[nz]) == np.sign(y[nz])) & (pred[nz] != 0)
    return {
        "n": n,
        "mae": _finite(mae),
        "rmse": _finite(math.sqrt(float(np.mean(err * err)))),
        "r2": _finite(1 - float(np.sum(err * err)) / sst) if sst > 0 else None,
        "mae_vs_zero": _finite(mae / zero_mae) if zero_mae else None,
        "hit_rate": float(hits.mean()) if nz.any() else None,
        "ic": _spearman(pred, y),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    import numpy as np
    import polars as pl

    if len(a) < 3 or not np.all(np.isfinite(a)):
        return None
    ra = pl.Series(a).rank("average").to_numpy()
    rb = pl.Series(b).rank("average").to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def trade(ds: Dataset, pred: np.ndarray, start: int, fee_bps: float, band: float,
          always_long: bool = False) -> tuple[dict[str, float | None], np.ndarray, np.ndarray]:
    """A sign strategy on `pred` from row `start` on: long above `band`, short below -band.

    Each row opens a position held for `ds.hold` periods, sized 1/hold so that the open
    positions add up to at most one unit per stream. It pays `fee_bps` per unit of position
    changed when it opens, and earns the row's target, the return *after* the decision, when
    it closes, hold periods later: so the equity curve and the drawdown never show a return
    before it happened. Each stream has an equal share of the capital. Returns the summary,
    and the period numbers and returns (which run up to hold periods past the last row).
    """
    import numpy as np
    import polars as pl

    if ds.returns == "none":
        return {}, np.array([]), np.array([])
    y = ds.y[start:]
    ret = {"log": np.expm1(y), "simple": y, "percent": y / 100.0}[ds.returns]
    p = np.asarray(pred[start:], dtype=float)
    pos = np.ones_like(p) if always_long else np.where(p > band, 1.0, np.where(p < -band, -1.0, 0.0))
    frame = pl.DataFrame({"stream": np.asarray(ds.stream[start:]), "pos": pos, "ret": ret,
                          "period": period_numbers(ds, start)})
    h, n_streams, fee = ds.hold, len(ds.stream_names), fee_bps / 10_000
    frame = frame.with_columns(
        turnover=(pl.col("pos") - pl.col("pos").shift(h, fill_value=0.0).over("stream")).abs() / h,
        net=pl.col("pos").rolling_sum(h, min_samples=1).over("stream") / h,  # the open positions together
        gain=pl.col("pos") * pl.col("ret") / h,
        closes=pl.col("period") + h,
    )
    opened = frame.group_by("period").agg(
        (pl.col("turnover").sum() / n_streams).alias("turnover"),
        (pl.col("net").abs().sum() / n_streams).alias("exposure"),
    )
    closed = frame.group_by(pl.col("closes").alias("period")).agg((pl.col("gain").sum() / n_streams).alias("gain"))
    periods = opened.join(closed, on="period", how="full", coalesce=True).sort("period").with_columns(
        r=pl.col("gain").fill_null(0.0) - fee * pl.col("turnover").fill_null(0.0),
    )
    r = periods["r"].to_numpy()
    equity = np.cumprod(1 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    summary = {
        "total_return": float(equity[-1] - 1) if len(r) else None,
        "sharpe": float(r.mean() / sd * math.sqrt(ds.periods_per_year)) if sd > 0 else None,
        "max_drawdown": float(np.max(1 - equity / peak)) if len(r) else None,
        "turnover": float(opened["turnover"].mean()) if len(r) else None,  # per period with decisions
        "exposure": float(opened["exposure"].mean()) if len(r) else None,
    }
    return summary, periods["period"].to_numpy(), r


def period_numbers(ds: Dataset, start: int) -> np.ndarray:
    """Each row's period, counted from 0: its bar (the examples log), its time's rank (a table
    with --ts), or its place in its stream."""
    import numpy as np
    import polars as pl

    if ds.clock is not None:
        clock = np.asarray(ds.clock[start:])
        return clock - clock.min() if len(clock) else clock
    if ds.ts is not None:
        return pl.Series(ds.ts[start:]).rank("dense").to_numpy().astype(np.int64) - 1
    return pl.DataFrame({"s": ds.stream[start:]}).select(pl.int_range(pl.len()).over("s")).to_series().to_numpy()


def period_times(ds: Dataset, start: int, periods: np.ndarray) -> np.ndarray:
    """The time of each period number (extrapolated past the last row), for charts."""
    import numpy as np

    if ds.ts is None:
        return periods
    known, first = np.unique(period_numbers(ds, start), return_index=True)
    times = ds.ts[start:][first].astype(np.float64)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    out = np.interp(periods, known, times)
    beyond = periods > known[-1]
    out[beyond] = times[-1] + (periods[beyond] - known[-1]) * step
    return out.astype(np.int64).astype("datetime64[ns]")


# -- the whole run ------------------------------------------------------------------------------


def _replay_job(args: tuple) -> Replay:
    ds, model, refresh, warmup = args
    return replay(_JOB_DATA if ds is None else ds, model, refresh, warmup)


_JOB_DATA: Dataset | None = None  # the dataset, inherited by forked workers instead of pickled


def check_models(opts: BacktestOptions) -> None:
    """Unknown models are errors before any data is read."""
    if len(set(opts.models)) != len(opts.models):
        raise ConfigError(f"--model values repeat: {', '.join(opts.models)}")
    for m in opts.models:
        resolve(m)


def run_backtest(ds: Dataset, opts: BacktestOptions, on_done=None) -> dict[str, Any]:
    """Replay every model (in `opts.jobs` processes), then score all against the baselines."""
    import numpy as np

    check_models(opts)
    if opts.warmup >= ds.n:
        raise ConfigError(f"--warmup {opts.warmup} leaves none of the {ds.n:,} rows to score; lower it")
    started = time.perf_counter()
    replays: list[Replay] = []
    if opts.jobs > 1 and len(opts.models) > 1:
        import multiprocessing

        global _JOB_DATA
        _JOB_DATA = ds
        try:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(opts.jobs, len(opts.models))) as pool:
                for rep in pool.imap(_replay_job, [(None, m, opts.refresh, opts.warmup) for m in opts.models]):
                    replays.append(rep)
                    if on_done:
                        on_done(rep)
        finally:
            _JOB_DATA = None
    else:
        for m in opts.models:
            replays.append(replay(ds, m, opts.refresh, opts.warmup))
            if on_done:
                on_done(replays[-1])

    w = opts.warmup
    y = ds.y[w:]
    zero = np.zeros(ds.n)
    naive = persistence(ds)
    zero_mae = float(np.mean(np.abs(y))) or None
    rows: list[dict[str, Any]] = []

    def add(model: str, refresh: str, pred: np.ndarray, baseline: bool, **extra: Any) -> None:
        metrics = score(y, pred[w:], zero_mae)
        trading, _, _ = trade(ds, pred, w, opts.fee_bps, opts.band)
        rows.append({"model": model, "refresh": refresh, "baseline": baseline, **metrics, **trading, **extra})

    add("zero", "-", zero, True)
    add("persistence", "-", naive, True)
    for rep in replays:
        for label, pred in rep.preds.items():
            extra = {"drifts": len(rep.drift_rows)} if label == "1" else {}
            add(rep.model, label, np.asarray(pred), label == "never", **extra)
    hold, _, _ = trade(ds, zero, w, opts.fee_bps, opts.band, always_long=True)
    return {
        "source": ds.source,
        "rows": ds.n,
        "scored_rows": ds.n - w,
        "rows_without_target": ds.dropped,
        "streams": len(ds.stream_names),
        "features": ds.features,
        "label_delay_rows": ds.delay,
        "holding_rows": ds.hold,
        "warmup": w,
        "refresh": [refresh_label(r) for r in opts.refresh],
        "refresh_unit": "rows" if ds.clock is None else "bars",
        "fee_bps": opts.fee_bps,
        "band": opts.band,
        "returns": ds.returns,
        "periods_per_year": round(ds.periods_per_year, 3),
        "results": rows,
        "buy_and_hold": hold or None,
        "drift_rows": {r.model: r.drift_rows for r in replays},
        "model_seconds": {r.model: round(r.seconds, 3) for r in replays},
        "elapsed_s": round(time.perf_counter() - started, 3),
        "_replays": replays,
        "_baselines": {"zero": zero, "persistence": naive},
    }
