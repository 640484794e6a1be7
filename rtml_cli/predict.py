"""The predict stage: features log + the newest verified checkpoint of each model -> predictions log.

Each model served (`--name`, several side by side) is a consumer of the features log with
offsets of its own, like a Kafka consumer group. The predictions log is the commit point:
each prediction row carries the features offset it answers, so on start the offsets are
read back from the log's tail (after the point `state/predict.json` last recorded), and a
restart after kill -9 neither skips a row nor predicts one twice.

Models are swapped in while serving (see `serving`): a loader thread verifies and loads a
newer checkpoint and hands it over by one reference assignment; the prediction loop picks
the new model up between two rows, so no prediction waits for a load, and none is made by a
half-loaded model.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any

from rtml_cli import atomic
from rtml_cli.build_state import read_build
from rtml_cli.checkpoint import signing_key
from rtml_cli.errors import ConfigError, RtmlError
from rtml_cli.learner import feature_columns, model_inputs, predict_value
from rtml_cli.log import OFFSET
from rtml_cli.logs import LogStore, store_for
from rtml_cli.serving import CheckpointWatcher, ModelSlot, Served

if TYPE_CHECKING:
    import polars as pl

FEATURES = "features"
PREDICTIONS = "predictions"
STATE_FILE = Path("state") / "predict.json"
NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class PredictOptions:
    names: list[str] = field(default_factory=lambda: ["linear"])
    symbols: list[str] | None = None
    start: str = "earliest"  # where a model with no offsets yet starts: "earliest" | "latest"
    poll: float = 0.5
    notify: bool = True
    chunk: int = 65_536  # rows per symbol per read: one Parquet row group of the log


@dataclass
class Published:
    """Predictions appended to the predictions log (one batch, every model)."""

    frame: pl.DataFrame


@dataclass
class Waiting:
    """Following: no checkpoint of model `name` yet; it is served as soon as one verifies."""

    name: str
    directory: Path


@dataclass
class Notice:
    """Following: a model loaded, or (`problem`) a checkpoint refused or a loader failure."""

    text: str
    problem: bool


@dataclass
class Idle:
    """Following: a pass over the new rows has ended, `n` predictions made."""

    n: int


PredictEvent = Published | Waiting | Notice | Idle


@dataclass
class _ModelRows:
    """One model's share of a batch: the rows due to it (None: all), its predictions so far and
    the version that made each, and the model it serves now."""

    slot: ModelSlot
    due: list[bool] | None
    serving: Served | None
    preds: list[float | None] = field(default_factory=list)
    versions: list[int | None] = field(default_factory=list)


def awaited_input(data_dir: Path, logs: LogStore | None = None) -> str | None:
    """What `rtml predict --follow` waits for before it can start; None when it is there."""
    features = store_for(data_dir, logs).open(FEATURES)
    if features.exists() and read_build(data_dir, logs) is not None:
        return None
    return f"the features log in {features.location} (start `rtml features --follow`)"


class ConsumerOffsets:
    """Where each model stands in the features log: per symbol, the offset of the newest row
    it predicted and published. The predictions log is the commit point (each row carries the
    features offset it answers); `state/predict.json` is a bookmark of where in that log the
    offsets were last saved, so that a start reads only the log's tail.

    Every model that ever wrote to the log keeps its offsets, also while it is not served,
    so that serving it again later resumes it instead of repeating it.
    """

    def __init__(self, data_dir: Path, names: list[str], predictions: Any):
        self.path = data_dir / STATE_FILE
        self.data_dir = data_dir
        self.predictions = predictions
        self.models: dict[str, dict[str, int]] = {n: {} for n in names}
        self.log: dict[str, int] = {}  # predictions log offsets the state file covers
        self.features_build: str | None = None
        self.saved_at = 0.0

    def resume(self, features_build: str | None) -> None:
        """The state file's offsets, moved on by whatever the log holds past them."""
        import polars as pl

        self.features_build = features_build
        doc: dict[str, Any] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                log_offsets = {str(k): int(v) for k, v in doc.get("log_offsets", {}).items()}
                consumers = {
                    str(n): {str(k): int(v) for k, v in offs.items()} for n, offs in doc.get("consumers", {}).items()
                }
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{self.path} is damaged ({type(exc).__name__}: {exc}); delete it: "
                    "the offsets are read back from the predictions log"
                ) from None
            if all(v <= self.predictions.last_offset(s) for s, v in log_offsets.items()):
                self.log = log_offsets
                for name, offs in consumers.items():
                    self.models[name] = offs
            # else the file is ahead of the log (a log moved away or restored): it is only a
            # bookmark, so it is dropped and the offsets are read from the whole log
        build = doc.get("features_build")
        if self.predictions.partitions() and build not in (None, features_build):
            raise ConfigError(
                f"the features in {self.data_dir} were rebuilt since the predictions were written, so their "
                f"offsets now mean other rows; move {self.predictions.location} and {self.path} away to start afresh"
            )
        for sym in self.predictions.partitions():
            tail = self.predictions.read_after(sym, self.log.get(sym, -1), columns=["model", "features_offset"])
            if tail.height:
                for name, newest in tail.group_by("model").agg(pl.col("features_offset").max()).iter_rows():
                    offs = self.models.setdefault(name, {})
                    offs[sym] = max(newest, offs.get(sym, -1))
            self.log[sym] = self.predictions.last_offset(sym)

    def committed(self, sym: str, log_last: int, newest: list[tuple[str, int]]) -> None:
        """A part of `sym` ending at `log_last` was appended, with each model's newest row.
        The log and the offsets move together: the state file saves both or neither."""
        self.log[sym] = log_last
        for name, upto in newest:
            self.models[name][sym] = upto

    def save(self) -> None:
        doc = {
            "features_build": self.features_build,
            "log_offsets": dict(sorted(self.log.items())),
            "consumers": {n: dict(sorted(o.items())) for n, o in self.models.items()},
            "saved_at": datetime.now(UTC).isoformat(),
        }
        atomic.write_json(self.path, doc)
        self.saved_at = time.monotonic()


class Predictor:
    """Serves one or more models over the features log; use as a context manager (holds the
    predictions log's writer lock)."""

    def __init__(self, data_dir: Path, opts: PredictOptions, logs: LogStore | None = None):
        if not opts.names:
            raise ConfigError("give at least one --name")
        if len(set(opts.names)) != len(opts.names):
            raise ConfigError(f"--name values repeat: {', '.join(opts.names)}")
        if opts.start not in ("earliest", "latest"):
            raise ConfigError(f"--from must be earliest or latest, not {opts.start!r}")
        self.data_dir = Path(data_dir)
        self.opts = opts
        self.logs = store_for(self.data_dir, logs)
        self.features = self.logs.open(FEATURES)
        self.predictions = self.logs.open(PREDICTIONS)
        key = signing_key()
        self.slots = [ModelSlot(self.data_dir, n, key) for n in opts.names]
        self.consumers = ConsumerOffsets(self.data_dir, opts.names, self.predictions)
        self.offsets = self.consumers.models  # per model, per symbol: the newest features row predicted
        self.predicted: dict[str, int] = dict.fromkeys(opts.names, 0)  # this run
        self.in_sample: dict[str, int] = dict.fromkeys(
            opts.names, 0
        )  # of them, made by a model that had learned the bar
        self.served: dict[str, list[int]] = {n: [] for n in opts.names}  # versions used, in order
        self.latency_ms: deque[float] = deque(maxlen=10_000)
        self.started = time.monotonic()
        self._serving: dict[str, Served | None] = dict.fromkeys(opts.names)
        self._trained_until: dict[tuple[str, int], str | None] = {}  # (model, version) -> trained until
        self._needed: list[str] | None = None  # the features log's columns a prediction reads
        self.wake = Event()  # new feature rows, or a new model loaded: predict
        self.watcher = CheckpointWatcher(self.slots, opts.poll, opts.notify)

    # -- setup -----------------------------------------------------------------------------------

    def __enter__(self) -> Predictor:
        self._features_params()
        self._writer_ctx = self.predictions.writer()
        self.writer = self._writer_ctx.__enter__()
        try:
            self._resume()
        except BaseException:
            self._writer_ctx.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.watcher.stop()
            self.consumers.save()
        finally:
            self._writer_ctx.__exit__(None, None, None)

    def _features_params(self) -> None:
        build = read_build(self.data_dir, self.logs)
        if not self.features.exists() or build is None:
            raise ConfigError(
                f"there is no features log in {self.logs.where}; run `rtml features` first or check --data-dir / --log"
            )
        self.bar_ns, self.horizon, self.features_build = build.bar_s * NS, build.horizon, build.build_id

    def _resume(self) -> None:
        """Consumer offsets, read back (see `ConsumerOffsets`); with --from latest, a model
        with none starts at the end of the features log, and that is remembered."""
        self.consumers.resume(self.features_build)
        if self.opts.start == "latest":
            for name in self.opts.names:
                if not self.offsets[name]:  # a new consumer: skip the history, and remember where that was
                    for sym in self.symbols():
                        self.offsets[name][sym] = self.features.last_offset(sym)
        self.consumers.save()

    # -- models ----------------------------------------------------------------------------------

    def load_all(self) -> None:
        for slot in self.slots:
            slot.refresh()

    def missing(self) -> list[ModelSlot]:
        return [s for s in self.slots if s.latest is None]

    def start_watching(self) -> None:
        """Follow mode: a loader thread keeps swapping newer checkpoints in, and wakes the
        prediction loop for them and for new feature rows."""
        self.watcher.start(self.wake, None if self.logs.is_kafka else self.features.root)

    def reports(self) -> list[str]:
        """Refused checkpoints and load problems not shown yet."""
        return _drain(s.reports for s in self.slots)

    def events(self) -> list[str]:
        """Models loaded, not shown yet."""
        return _drain(s.events for s in self.slots)

    # -- predicting ------------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        present = self.features.partitions()
        return [s for s in present if self.opts.symbols is None or s in self.opts.symbols]

    def backlog(self) -> int:
        """Feature rows not predicted yet by the models that are serving, summed over models."""
        ends = {s: self.features.last_offset(s) for s in self.symbols()}
        return sum(
            max(0, end - self.offsets[slot.name].get(s, -1))
            for slot in self.slots
            if slot.latest is not None
            for s, end in ends.items()
        )

    def _pass(self, stop: Event | None = None) -> Iterator[pl.DataFrame]:
        """Predict every feature row available now (or until `stop`), yielding each batch published."""
        while not (stop is not None and stop.is_set()):
            active = [s for s in self.slots if s.latest is not None]
            if not active:
                break
            start = {sym: min(self.offsets[s.name].get(sym, -1) for s in active) for sym in self.symbols()}
            frame = self.features.read_in_time_order(list(start), start, self.opts.chunk, self._columns(start))
            if frame.height == 0:
                break
            published = self._predict(frame, active, stop)
            if published is None:
                break
            yield published
        if time.monotonic() - self.consumers.saved_at > 10:
            self.consumers.save()

    def _columns(self, symbols) -> list[str] | None:
        """What a prediction needs of a features row: its place and the model inputs.

        Read once from a part's schema: one build of the features log has one set of columns.
        """

        if self._needed is None:
            names = next((c for c in (self.features.columns(s) for s in symbols) if c is not None), None)
            if names is not None:
                self._needed = [OFFSET, "ts", "symbol", *feature_columns(names)]
        return self._needed

    def _predict(self, frame: pl.DataFrame, active: list[ModelSlot], stop: Event | None) -> pl.DataFrame | None:
        import polars as pl

        # per model: which rows are due (None: all of them; a model that joined later may be
        # behind the others), its predictions and the versions that made them, row by row
        plans = []
        for slot in active:
            start = pl.col("symbol").replace_strict(self.offsets[slot.name], default=-1, return_dtype=pl.Int64)
            mask = frame.select(pl.col(OFFSET) > start).to_series()
            plans.append(_ModelRows(slot, None if mask.all() else mask.to_list(), self._serving[slot.name]))
        for i, (x, _row) in enumerate(model_inputs(frame, feature_columns(frame.columns))):
            if not i & 255 and i and stop is not None and stop.is_set():
                break  # finish the row in hand, publish what is predicted, stop
            for plan in plans:
                if plan.due is not None and not plan.due[i]:
                    plan.preds.append(None)
                    plan.versions.append(None)
                    continue
                serving = plan.serving
                if plan.slot.latest is not serving:  # a new model: swapped in between rows, never during one
                    plan.serving = serving = self._swap(plan.slot)
                assert serving is not None  # a slot is active once it has a model
                plan.preds.append(predict_value(serving.model, serving.kind, x))
                plan.versions.append(serving.version)
        frames = []
        for plan in plans:
            slot, due, preds, versions = plan.slot, plan.due, plan.preds, plan.versions
            done = len(preds)
            until = {v: _epoch_ns(self._trained_until[slot.name, v]) for v in set(versions) if v is not None}
            version = pl.Series("model_version", versions, dtype=pl.Int64)
            out = frame.head(done).select(
                "ts",
                "symbol",
                pl.col(OFFSET).alias("features_offset"),
                pl.lit(slot.name).alias("model"),
                pl.Series("prediction", preds, dtype=pl.Float64),
                version,
                version.replace_strict(until, default=None, return_dtype=pl.Int64)
                .cast(pl.Datetime("ns", "UTC"))
                .alias("model_trained_until"),
            )
            # in sample: the model had learned a target that ends after this bar's close (a model
            # trained on later data, e.g. a challenger catching up on history). In step with
            # training, the newest target known at a bar's close is h bars older: not set. (A
            # target spans h rows; across a gap of days with no bar emitted it ends later than
            # h bars, so the h rows after such a gap can be in sample unmarked.) Null when the
            # checkpoint does not say what it was trained until.
            known = pl.col("ts") - pl.duration(nanoseconds=self.horizon * self.bar_ns)
            out = out.with_columns(in_sample=pl.col("model_trained_until") > known)
            if due is not None:
                out = out.filter(pl.Series(due[:done]))
            if out.height:
                frames.append(out)
                self.predicted[slot.name] += out.height
                self.in_sample[slot.name] += int(out["in_sample"].sum())
        if not frames:
            return None
        return self._publish(pl.concat(frames).sort("symbol", "features_offset", "model"))

    def _swap(self, slot: ModelSlot) -> Served:
        served = slot.latest
        assert served is not None  # a slot is active once it has a model
        self._serving[slot.name] = served
        self.served[slot.name].append(served.version)
        self._trained_until[slot.name, served.version] = served.trained_until
        return served

    def _publish(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Append each symbol's predictions as one part (the commit), then move the offsets."""
        import polars as pl

        out = []
        for (sym,), part in batch.group_by("symbol", maintain_order=True):
            now = time.time_ns()
            part = part.with_columns(
                ((now - pl.col("ts").dt.epoch("ns") - self.bar_ns) / 1e6).alias("latency_ms"),
            )
            newest = part.group_by("model").agg(pl.col("features_offset").max()).rows()
            first, last = self.writer.append(sym, part)
            self.consumers.committed(sym, last, newest)
            self.latency_ms.extend(part["latency_ms"].to_list())
            out.append(part.with_columns(pl.int_range(first, last + 1, dtype=pl.Int64).alias(OFFSET)))
        return pl.concat(out)

    def run(self, stop: Event, follow: bool) -> None:
        """Predict what is there; with `follow`, keep predicting new rows until `stop`."""
        for _ in self.loop(stop, follow):
            pass

    def loop(self, stop: Event, follow: bool) -> Iterator[PredictEvent]:
        """The stage: predict what is there and, with `follow`, keep predicting new rows (and
        swapping newer models in) until `stop`. Yields each batch published; following, also
        the models it waits for, what the loader did or refused, and the end of each pass."""
        if follow:
            for slot in self.missing():
                yield Waiting(slot.name, slot.store.dir)
            self.start_watching()
        while not stop.is_set():
            self.wake.clear()
            n = 0
            for frame in self._pass(stop):
                n += frame.height
                yield Published(frame)
            if not follow:
                break
            for problem in self.reports():
                yield Notice(problem, problem=True)
            for event in self.events():
                yield Notice(event, problem=False)
            yield Idle(n)
            if n == 0:
                _wait(stop, self.wake, self.opts.poll)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latency_ms)
        return {
            "models": {
                s.name: {
                    "version": s.latest.version if s.latest else None,
                    "trained_until": s.latest.trained_until if s.latest else None,
                    "predicted_this_run": self.predicted[s.name],
                    "in_sample_this_run": self.in_sample[s.name],
                    "versions_served": self.served[s.name],
                    "skipped_checkpoints": [f"{v}: {why}" for v, why in sorted(s.bad.items())],
                    "load_ms_max": round(max(s.load_ms), 3) if s.load_ms else None,
                    "offsets": dict(sorted(self.offsets[s.name].items())),
                }
                for s in self.slots
            },
            "predicted_this_run": sum(self.predicted.values()),
            "latency_ms": {
                "median": round(lat[len(lat) // 2], 3) if lat else None,
                "max": round(lat[-1], 3) if lat else None,
            },
            "backlog": self.backlog(),
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "predictions_log": self.predictions.location,
        }


def _drain(queues) -> list[str]:
    out = []
    for q in queues:
        while q:
            out.append(q.popleft())
    return out


def _wait(stop: Event, wake: Event, timeout: float) -> None:
    """Sleep until `wake` is set or `timeout` passes; a `stop` is noticed within 0.1 s."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0 or wake.wait(min(left, 0.1)):
            return


def _epoch_ns(text: str | None) -> int | None:
    """An ISO time from a manifest as ns since the epoch (UTC when it names no zone)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def require_models(predictor: Predictor) -> None:
    """One-shot mode: every model named must have a checkpoint that verifies."""
    missing = predictor.missing()
    if not missing:
        return
    lines = []
    root = missing[0].store.dir.parent
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for slot in missing:
        if not slot.store.dir.is_dir():
            lines.append(
                f"there are no checkpoints named {slot.name!r} in {root} ("
                + (f"the names there: {', '.join(names)}" if names else "none yet: run `rtml train` first")
                + ")"
            )
            continue
        why = "; ".join(f"{v}: {b}" for v, b in sorted(slot.bad.items())) or "there is none"
        lines.append(f"no usable checkpoint of {slot.name!r} in {slot.store.dir} ({why})")
    raise RtmlError("; ".join(lines) + "; see `rtml checkpoints`")
