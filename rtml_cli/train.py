"""The train stage: examples log -> prequential learner -> checkpoints, resumable exactly-once.

A checkpoint stores the model together with the per-symbol offsets of the last example it
learned. Training resumes from the newest checkpoint that verifies and learns every example
after those offsets, so after a crash at any moment no example is learned twice or skipped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any

from rtml_cli.build_state import read_build
from rtml_cli.checkpoint import KEY_ENV, Checkpoint, Checkpointer, CheckpointStore, runtime_versions, signing_key
from rtml_cli.errors import ConfigError, RtmlError
from rtml_cli.learner import Learner, RollingMetrics, feature_columns, model_inputs
from rtml_cli.log import OFFSET
from rtml_cli.logs import LogStore, store_for
from rtml_cli.models import CLASSIFIER, resolve

if TYPE_CHECKING:
    import polars as pl

EXAMPLES = "examples"


@dataclass
class TrainOptions:
    model: str = "linear"
    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 10_000
    checkpoint_interval: float = 60.0
    keep: int = 10
    symbols: list[str] | None = None
    on_drift: str = "ignore"
    window: int = 500
    fresh: bool = False  # start a new model although checkpoints exist (none of which loads)


@dataclass
class Learned:
    """Progress while learning: `n` more examples learned (every 4,096, and at a chunk's end)."""

    n: int


@dataclass
class Stepped:
    """A pass over the examples available has ended, `n` of them learned (0: none was new)."""

    n: int


TrainEvent = Learned | Stepped


@dataclass
class TrainReport:
    learned: int = 0
    started: float = field(default_factory=time.monotonic)


def awaited_input(data_dir: Path, logs: LogStore | None = None) -> str | None:
    """What `rtml train --follow` waits for before it can start; None when it is there: the
    examples log and the record of how it was built (a checkpoint names its build)."""
    examples = store_for(data_dir, logs).open(EXAMPLES)
    if examples.exists() and read_build(data_dir, logs) is not None:
        return None
    return f"the examples log in {examples.location} (start `rtml features --follow`)"


class Trainer:
    """Trains one named model from the examples log; use as a context manager (holds the lock)."""

    def __init__(self, data_dir: Path, opts: TrainOptions, logs: LogStore | None = None):
        self.data_dir = Path(data_dir)
        self.logs = store_for(data_dir, logs)
        self.opts = opts
        self.spec = resolve(opts.model)
        self.name = opts.name or re.sub(r"[^A-Za-z0-9_.-]", "-", self.spec.name)
        self.store = CheckpointStore(self.data_dir, self.name)
        self.examples = self.logs.open(EXAMPLES)
        self.key = signing_key()
        self.offsets: dict[str, int] = {}
        self.trained_until: str | None = None
        self.resumed_from: int | None = None
        self.skipped: list[str] = []
        self.version: int | None = None
        self.report = TrainReport()
        self.examples_build: str | None = None

    def __enter__(self) -> Trainer:
        if not self.examples.exists():  # before the lock: a mistyped --data-dir leaves nothing behind
            raise ConfigError(
                f"there is no examples log in {self.logs.where}; run `rtml features` first or check --data-dir / --log"
            )
        self._lock = self.store.lock()
        self._lock.__enter__()
        try:
            self._start()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.checkpointer.close()
        finally:
            self._lock.__exit__(None, None, None)

    def _spec_doc(self) -> dict[str, Any]:
        return {"model": self.spec.name, "kind": self.spec.kind, "params": {**self.spec.defaults, **self.opts.params}}

    def _start(self) -> None:
        self._check_target()
        cp, payload, self.skipped = resume_point(
            self.store, self.key, self.opts.fresh, self.examples_build, self._spec_doc(), self.data_dir
        )
        if cp is not None and payload is not None:
            model = payload["model"]
            self.offsets = {k: int(v) for k, v in cp.manifest.get("offsets", {}).items()}
            self.trained_until = cp.manifest.get("trained_until")
            self.resumed_from = cp.version
            self.version = cp.version
            learned, drifts = int(cp.manifest.get("examples_learned", 0)), int(cp.manifest.get("drift_count", 0))
            health = cp.manifest.get("health") if isinstance(cp.manifest.get("health"), dict) else None
        else:
            model, learned, drifts, health = self.spec.build(self.opts.params), 0, 0, None
        self.learner = Learner(
            model,
            self.spec.kind,
            lambda: self.spec.build(self.opts.params),
            self.opts.on_drift,
            self.opts.window,
            learned,
            drifts,
            health,
        )
        if payload is not None and "detector" in payload:
            self.learner.detector = payload["detector"]
            if payload["metrics"].window == self.opts.window:  # a new --window starts afresh
                self.learner.metrics = payload["metrics"]
        self.checkpointer = Checkpointer(self.store, self.opts.keep, self.key)
        self._learned_at: dict[int, int] = {}  # checkpoint version -> examples learned in it
        self._resumed_learned = learned
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _check_target(self) -> None:
        build = read_build(self.data_dir, self.logs)  # a damaged or missing record of the build is an error
        if build is None:
            return
        self.examples_build, target = build.build_id, build.target
        if self.spec.kind == CLASSIFIER and target != "sign":
            raise ConfigError(
                f"{self.spec.name} is a classifier; build examples with `rtml features --target sign --rebuild`"
            )
        if self.spec.kind != CLASSIFIER and target == "sign":
            raise ConfigError(
                f"the examples have --target sign; {self.spec.name} is a regressor: use logistic, hat-clf or arf-clf"
            )

    def symbols(self) -> list[str]:
        present = self.examples.partitions()
        return [s for s in present if self.opts.symbols is None or s in self.opts.symbols]

    @property
    def metrics(self) -> RollingMetrics:
        """The rolling metrics (a trainer always keeps them: --window is at least 1)."""
        assert self.learner.metrics is not None
        return self.learner.metrics

    def backlog(self) -> int:
        return sum(max(0, self.examples.last_offset(s) - self.offsets.get(s, -1)) for s in self.symbols())

    def step(self, chunk: int = 10_000, stop: Event | None = None) -> int:
        """Learn every example available now (or until `stop`); returns how many."""
        events = self._pass(chunk, stop)
        while True:
            try:
                next(events)
            except StopIteration as done:
                return done.value

    def _pass(self, chunk: int = 10_000, stop: Event | None = None) -> Generator[Learned, None, int]:
        """Learn every example available now (or until `stop`), reporting progress; returns how many."""
        done = 0
        while not (stop is not None and stop.is_set()):
            frame = self.examples.read_in_time_order(self.symbols(), self.offsets, chunk)
            n = yield from self._learn(frame, stop)
            for sym, offset in self.offsets.items():  # learned: never read again by this process
                self.examples.release(sym, offset)
            if n == 0:
                break
            done += n
        return done

    def _learn(self, frame: pl.DataFrame, stop: Event | None = None) -> Generator[Learned, None, int]:
        import polars as pl

        if frame.height == 0:
            return 0
        fcols = feature_columns(frame.columns)
        n_feat = len(fcols)
        learner, every, interval = self.learner, self.opts.checkpoint_every, self.opts.checkpoint_interval
        # (times as integers: turning each into a zoned datetime would cost more than learning)
        rows = model_inputs(frame, fcols, "target", "symbol", OFFSET, pl.col("ts").dt.epoch("ns"))
        done, ts = 0, None
        for x, row in rows:
            try:
                learner.step(x, row[n_feat])
            except (TypeError, ValueError, AttributeError, ArithmeticError, KeyError) as exc:
                raise ConfigError(
                    f"model {self.spec.name} {self._spec_doc()['params']} failed on an example "
                    f"({type(exc).__name__}: {exc}); check the --param values"
                ) from None
            self.offsets[row[n_feat + 1]] = row[n_feat + 2]
            ts = row[n_feat + 3]
            done += 1
            self._since_checkpoint += 1
            if done & 255 == 0:
                if stop is not None and stop.is_set():
                    break  # Ctrl-C while catching up: the final checkpoint covers what was learned
                if time.monotonic() - self._last_checkpoint >= interval:
                    self._since_checkpoint = max(self._since_checkpoint, every)
            if self._since_checkpoint >= every:
                self.trained_until = _iso(ts)
                self.checkpoint()
            if done % 4096 == 0:
                yield Learned(4096)
        if ts is not None:
            self.trained_until = _iso(ts)
        if done % 4096:
            yield Learned(done % 4096)
        self.report.learned += done
        return done

    def checkpoint(self, wait: bool = False) -> int | None:
        """Snapshot the model with its offsets now (unless a write is in flight)."""
        if wait:
            self.checkpointer.wait()
        manifest = {
            "name": self.name,
            "examples_build": self.examples_build,
            "spec": self._spec_doc(),
            "versions": runtime_versions(),
            "examples_learned": self.learner.learned,
            "offsets": dict(self.offsets),
            "trained_until": self.trained_until,
            "metrics": self.metrics.as_dict(),
            "drift_count": self.learner.drifts,
            "on_drift": self.opts.on_drift,
            "health": self.learner.health(),
            "diverged": self.learner.diverged is not None,  # predict serves no diverged model
        }
        payload = {"model": self.learner.model, "detector": self.learner.detector, "metrics": self.learner.metrics}
        version = self.checkpointer.snapshot(payload, manifest)
        if version is not None:
            self._learned_at[version] = self.learner.learned
            self.version = version
            self._since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
        if wait:
            self.checkpointer.wait()
        return version

    def run(self, stop: Event, follow: bool, poll: float = 0.5) -> None:
        """Learn what is there; with `follow`, keep learning as examples arrive until `stop`."""
        for _ in self.loop(stop, follow, poll):
            pass

    def loop(self, stop: Event, follow: bool, poll: float = 0.5) -> Iterator[TrainEvent]:
        """The stage: learn what is there and, with `follow`, keep learning as examples arrive
        until `stop`, yielding progress (`Learned`) and the end of each pass (`Stepped`).
        Consume it to the end: the final checkpoint is written when it ends."""
        while not stop.is_set():
            n = yield from self._pass(stop=stop)
            yield Stepped(n)
            if not follow:
                break
            if (
                n == 0
                and self._since_checkpoint
                and (
                    # a due checkpoint was skipped while the previous one was being written; or time is up
                    self._since_checkpoint >= self.opts.checkpoint_every
                    or time.monotonic() - self._last_checkpoint >= self.opts.checkpoint_interval
                )
            ):
                self.checkpoint()
            if n == 0:
                stop.wait(poll)
        self.finish()

    def finish(self) -> None:
        """Make sure a checkpoint of everything learned is on disk, or say why not."""
        self.checkpointer.wait()
        for _attempt in range(2):
            if self._committed() == self.learner.learned and self.version is not None:
                return
            self.checkpoint(wait=True)
        if self._committed() != self.learner.learned:
            problems = "; ".join(self.checkpointer.failures[-2:]) or "no checkpoint was written"
            raise RtmlError(
                f"the last {self.learner.learned - self._committed():,} examples learned are in no checkpoint "
                f"({problems}); the next run learns them again"
            )

    def _committed(self) -> int:
        """Examples learned as of the newest checkpoint written so far."""
        written = [self._learned_at[v] for v in self.checkpointer.written if v in self._learned_at]
        return max(written, default=self._resumed_learned)

    def summary(self) -> dict[str, Any]:
        stalls = sorted(self.checkpointer.stalls_ms)
        return {
            "name": self.name,
            "model": self.spec.name,
            "checkpoint_dir": str(self.store.dir),
            "resumed_from": self.resumed_from,
            "skipped_checkpoints": self.skipped,
            "learned_this_run": self.report.learned,
            "examples_learned": self.learner.learned,
            "version": self.version,
            "checkpoints_written": sorted(self.checkpointer.written),
            "checkpoint_failures": self.checkpointer.failures,
            "stall_ms": {
                "max": round(stalls[-1], 3) if stalls else None,
                "median": round(stalls[len(stalls) // 2], 3) if stalls else None,
                "snapshots": "fork" if self.checkpointer.use_fork else "inline",
            },
            "trained_until": self.trained_until,
            "offsets": dict(sorted(self.offsets.items())),
            "backlog": self.backlog(),
            "metrics": self.metrics.as_dict(),
            "drift_count": self.learner.drifts,
            "diverged": self.learner.diverged,
            "elapsed_s": round(time.monotonic() - self.report.started, 3),
            "finished_at": datetime.now(UTC).isoformat(),
        }


def resume_point(
    store: CheckpointStore,
    key: bytes | None,
    fresh: bool,
    examples_build: str | None,
    spec_doc: dict[str, Any],
    data_dir: Path,
) -> tuple[Checkpoint | None, dict[str, Any] | None, list[str]]:
    """The checkpoint a trainer resumes from (None: a new model), its payload, and why newer
    ones were skipped. Refuses, with what to do, whatever would lose or mix up a model:
    checkpoints none of which loads (a wrong key, another River version) unless `fresh`;
    `fresh` while one loads; examples rebuilt since; another spec or parameters."""
    cp, payload, problems = store.latest_valid(key)
    if cp is None and problems and not fresh:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ConfigError(
            f"none of the {len(problems)} checkpoints in {store.dir} can be loaded ({shown}). Fix the cause "
            f"(the right {KEY_ENV}, the River version they name), or start a new model with --fresh: "
            "checkpoints signed with another key or written by another River version are kept"
        )
    if cp is not None and fresh:
        raise ConfigError(
            f"checkpoint v{cp.version} in {store.dir} loads, so there is nothing to start afresh from; "
            "train a new model beside it with --name"
        )
    if cp is not None and cp.manifest.get("examples_build") != examples_build:
        raise ConfigError(
            f"the examples in {data_dir} were rebuilt (`rtml features --rebuild`) since the checkpoints in "
            f"{store.dir} were written, so their offsets mean other examples now; train a fresh model "
            "with --name, or delete that directory"
        )
    if cp is not None and payload is not None:
        spec = cp.manifest.get("spec", {})
        if spec.get("model") != spec_doc["model"] or spec.get("params") != _as_json(spec_doc["params"]):
            raise ConfigError(
                f"the checkpoints in {store.dir} are of {spec.get('model')} {spec.get('params')}, not "
                f"{spec_doc['model']} {spec_doc['params']}; use --name to train another model beside them"
            )
    return cp, payload, problems


def _as_json(value: Any) -> Any:
    """`value` as it reads back from a manifest (tuples become lists, and so on)."""
    return json.loads(json.dumps(value, default=str))


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat()


def list_checkpoints(data_dir: Path, name: str | None) -> list[dict[str, Any]]:
    """Every checkpoint (of `name`, or of all names) with its verification status."""

    root = Path(data_dir) / "checkpoints"
    names = (
        [name]
        if name
        else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    key = signing_key()
    out = []
    for n in names:
        store = CheckpointStore(data_dir, n)
        if not store.dir.is_dir():
            raise RtmlError(f"there are no checkpoints named {n!r} in {root}; see `rtml checkpoints`")
        listed = {cp.manifest_path for cp in store.list()}
        for cp in store.list():
            status = cp.verification(key)
            m = cp.manifest

            def part(key: str, m=m) -> dict:
                value = m.get(key)
                return value if isinstance(value, dict) else {}

            out.append(
                {
                    "name": n,
                    "version": cp.version,
                    "created_at": m.get("created_at"),
                    "examples_learned": m.get("examples_learned"),
                    "trained_until": m.get("trained_until"),
                    "metrics": part("metrics"),
                    "drift_count": m.get("drift_count"),
                    "river": part("versions").get("river"),
                    "diverged": m.get("diverged") is True,
                    "size": part("pickle").get("size"),
                    "status": status,
                }
            )
        for path in store.manifests_on_disk():
            if path not in listed:
                out.append({"name": n, "version": int(path.stem), "status": f"{path.name} is not readable JSON"})
    return out
