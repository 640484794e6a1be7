"""`rtml run`: the whole pipeline as one system, each stage its own OS process.

The supervisor starts `ingest`, `features --follow`, one `train --follow` per model and
`predict --follow` on one data directory, the way they run in production: separate
processes, each restartable on its own, talking only through the logs. It watches them,
restarts one that dies (with back-off; `--no-restart` ends the run instead), writes each
stage's output to `<data-dir>/logs/<stage>.log`, and stops them in pipeline order, each
after the one before it has stopped and it has caught up on what that one wrote.

`Supervisor.loop` yields events (a stage started, crashed, restarted, finished; a periodic
tick) for whatever shows them: the dashboard, `--json`, a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any

BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
INPUT_LOG = {"features": "ticks", "train": "examples", "predict": "features"}  # what each consumer reads
STABLE_S = 30.0  # a stage that ran this long without dying starts its back-off afresh
CHECKPOINT_INTERVAL_S = 3  # train: the longest a learned example waits for a checkpoint


@dataclass
class StageSpec:
    name: str  # "ingest", "features", "train linear", "predict"
    args: list[str]  # rtml's arguments
    follows: str | None = None  # the consumer whose lag says it has caught up (see status)


class StageProcess:
    """One stage's OS process, restarted with back-off; its output appended to its log file."""

    def __init__(self, spec: StageSpec, log_dir: Path):
        self.spec = spec
        self.log_path = log_dir / (spec.name.replace(" ", "-") + ".log")
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.backoff = BACKOFF_FIRST_S
        self.next_start: float | None = None
        self.exit_code: int | None = None
        self.state = "starting"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- rtml {' '.join(self.spec.args)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
            log.flush()
            # its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # stops the stages in pipeline order
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rtml_cli", *self.spec.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "COLUMNS": "100"},
                preexec_fn=_die_with_parent(),
            )
        self.started_at = time.monotonic()
        self.next_start = None
        self.exit_code = None
        self.state = "running"

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def schedule_restart(self) -> float:
        """After a crash: the next start, `backoff` seconds on (doubling up to a cap)."""
        if time.monotonic() - self.started_at > STABLE_S:
            self.backoff = BACKOFF_FIRST_S
        delay = self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
        self.next_start = time.monotonic() + delay
        self.restarts += 1
        self.state = f"restarting in {delay:.0f} s"
        return delay

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (each stage then finishes its step, publishes and exits 0); SIGKILL after `timeout`."""
        if self.next_start is not None:  # stopped while waiting to restart after a crash
            self.next_start = None
            self.state = f"stopped (had died: exit {self.exit_code}; not restarted)"
        if self.proc is None or self.proc.poll() is not None:
            return self.exit_code
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.state = "stopped" if self.exit_code == 0 else f"stopped (exit {self.exit_code})"
        return self.exit_code

    def tail(self, lines: int = 8) -> list[str]:
        """The last lines of its log (what it said before it died)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before rtml: on Linux, ask for a SIGTERM when the supervisor dies
    (even by kill -9), so that no stage runs on, holding its lock, without the run that
    started it. The C function is looked up here, in the parent: between fork and exec the
    child may only call it (importing there could deadlock on a lock another thread held)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # the stages outlive a killed supervisor, as they would on another system
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def in_child() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return in_child


@dataclass
class Started:
    stage: str
    pid: int
    restart: int  # 0 for the first start


@dataclass
class Crashed:
    stage: str
    exit_code: int
    last_lines: list[str]
    restart_in: float | None  # None: --no-restart, the run ends


@dataclass
class Finished:
    """A stage with an end of its own (ingest of a file, or with --max-ticks) ended well."""

    stage: str


@dataclass
class Tick:
    """Every half second, for redrawing."""

    at: float = field(default_factory=time.monotonic)


RunEvent = Started | Crashed | Finished | Tick


class Supervisor:
    """Starts, watches and restarts the stages; stops them in pipeline order."""

    def __init__(self, data_dir: Path, specs: list[StageSpec], restart: bool = True, logs: Any = None):
        self.data_dir = Path(data_dir)
        self.logs = logs  # where the stages' logs are (None: the data directory)
        self.stages = [StageProcess(s, self.data_dir / "logs") for s in specs]
        self.restart = restart
        self.failed: Crashed | None = None  # the crash that ended a --no-restart run
        self.started = time.monotonic()

    def loop(self, stop: Event, duration: float | None = None) -> Iterator[RunEvent]:
        """Run until `stop`, the duration, a crash under --no-restart, or the end of a finite
        ingest (then once the stages after it have caught up)."""
        for st in self.stages:
            st.start()
            yield Started(st.name, st.proc.pid if st.proc else 0, 0)
        deadline = None if duration is None else time.monotonic() + duration
        ingest = self.stages[0]
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for st in self.stages:
                if st.state.startswith("restarting") and st.next_start is not None:
                    if time.monotonic() >= st.next_start:
                        st.start()
                        yield Started(st.name, st.proc.pid if st.proc else 0, st.restarts)
                    continue
                if st.state != "running":
                    continue
                code = st.poll()
                if code is None:
                    continue
                st.exit_code = code
                if code == 0 and st is ingest:  # its input ended (a file, --max-ticks): not a crash
                    st.state = "finished"
                    yield Finished(st.name)
                    continue
                if not self.restart:
                    st.state = f"crashed (exit {code})"
                    self.failed = Crashed(st.name, code, st.tail(), None)
                    yield self.failed
                    return
                delay = st.schedule_restart()
                yield Crashed(st.name, code, st.tail(), delay)
            if ingest.state == "finished" and self._caught_up():
                return
            yield Tick()
            stop.wait(0.5)

    def _caught_up(self) -> bool:
        """Every stage after ingest has read all its input (one look at the data directory)."""
        snap = self._look()
        return snap is not None and all(_done(st.spec.follows, snap) for st in self.stages if st.spec.follows)

    def shutdown(self, drain: float = 15.0, on_stop: Callable[[StageProcess], None] | None = None) -> None:
        """Stop the stages in pipeline order: each once the one before it has stopped and it
        has caught up on what that one wrote (at most `drain` seconds), so nothing is left
        half-done between two logs."""
        for st in self.stages:
            if st.proc is not None and st.poll() is None and st.spec.follows and self.failed is None:
                deadline = time.monotonic() + drain
                while time.monotonic() < deadline and not self._consumer_done(st.spec.follows):
                    if st.poll() is not None:
                        break
                    time.sleep(0.25)
            if on_stop:
                on_stop(st)
            st.stop()

    def _consumer_done(self, consumer: str) -> bool:
        snap = self._look()
        return snap is not None and _done(consumer, snap)

    def snapshot(self) -> dict:
        """`rtml status` of the run's data directory and logs."""
        from rtml_cli.status import snapshot

        return snapshot(self.data_dir, self.logs)

    def _look(self) -> dict | None:
        """`rtml status` of the run; None if it cannot be read right now."""
        try:
            return self.snapshot()
        except Exception:
            return None

    def summary(self) -> dict:
        return {
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "stages": {
                st.name: {
                    "state": st.state,
                    "exit_code": st.exit_code,
                    "restarts": st.restarts,
                    "log": str(st.log_path),
                }
                for st in self.stages
            },
            "failed": None
            if self.failed is None
            else {"stage": self.failed.stage, "exit_code": self.failed.exit_code, "last_lines": self.failed.last_lines},
        }


def _done(consumer: str, snap: dict) -> bool:
    """Whether `consumer` (a stage's name in `rtml status`) has read all its input."""
    consumers = snap["consumers"]
    mine = [c for name, c in consumers.items() if name == consumer or name.startswith(consumer + " ")]
    if not mine or mine == [None]:
        # no record of this consumer yet: it is done when its input is empty (a run whose
        # ingest wrote nothing); a trainer before its first checkpoint counts as done too:
        # its SIGTERM writes a final checkpoint of whatever it learned
        source = INPUT_LOG[consumer.split()[0]]
        no_model = not any(cp.get("version") for cp in snap["checkpoints"].values())
        if consumer.startswith("train") or (consumer.startswith("predict") and no_model):
            return True  # a predictor with no model to serve has nothing to catch up on
        return snap["logs"][source]["rows"] == 0
    return all(c is not None and "problem" not in c and c["behind_rows"] == 0 for c in mine)


def stage_specs(
    data_dir: Path,
    source: str,
    models: list[str],
    symbols: str | None,
    speed: float | None,
    path: str | None,
    fmt: str,
    checkpoint_every: int,
    max_ticks: int | None,
    log_url: str | None = None,
) -> list[StageSpec]:
    """The stages of a run, in pipeline order, as rtml command lines."""
    d = ["--data-dir", str(data_dir), *(["--log", log_url] if log_url else [])]
    ingest = ["ingest", "--source", source, *d]
    if symbols:
        ingest += ["--symbols", symbols]
    if speed is not None:
        ingest += ["--speed", str(speed)]
    if path is not None:
        ingest += ["--path", path, "--format", fmt]
    if max_ticks is not None:
        ingest += ["--max-ticks", str(max_ticks)]
    specs = [StageSpec("ingest", ingest), StageSpec("features", ["features", "--follow", *d], follows="features")]
    for m in models:
        specs.append(
            StageSpec(
                f"train {m}",
                # a checkpoint at least every few seconds while there is something new: what
                # status reads, so that a stop in pipeline order sees the trainer catch up
                [
                    "train",
                    "--follow",
                    "--model",
                    m,
                    "--name",
                    m,
                    "--checkpoint-every",
                    str(checkpoint_every),
                    "--checkpoint-interval",
                    str(CHECKPOINT_INTERVAL_S),
                    *d,
                ],
                follows=f"train {m}",
            )
        )
    names = [a for m in models for a in ("--name", m)]
    specs.append(StageSpec("predict", ["predict", "--follow", *names, *d], follows="predict"))
    return specs
