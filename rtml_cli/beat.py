"""Ingest's heartbeat: what the feature builder needs to know of the writer of the ticks log.

While `rtml ingest` runs it rewrites `state/ingest.json` (atomically, every BEAT_SECONDS) with
when it began delivering (its first write), when it last beat, and each symbol's newest
offset written. Two things follow from it:

- The market clock of `rtml features --follow` starts from ingest's *watermark*, the newest
  tick time of its last complete flush (a flush publishes one part per symbol, one after the
  other: until the last is published, the newest tick of the first says nothing about the
  others), and runs on with wall time only while ingest delivers (from its first write to
  its last beat). An ingest that is down, or restarting (loading its de-duplication index,
  opening its source), stops the clock, so its outage does not close bars whose ticks it
  has yet to write.
- A ticks partition that ends before the offset ingest recorded has lost its last part(s):
  that is reported, not mistaken for a shorter log (and ingest will not reuse the offsets).

The offsets are lower bounds: a beat is written after the parts it counts are published.

With the logs on Kafka the beats go to the topic `<prefix>heartbeats` instead (one message a
beat, the same document as JSON, key `ingest`), so that feature builders on other machines
read them: one ingest per topic prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtml_cli import atomic
from rtml_cli.errors import LogError

BEAT_FILE = Path("state") / "ingest.json"
BEAT_SECONDS = 0.5
HEARTBEATS, BEAT_KEY = "heartbeats", "ingest"  # on Kafka: the topic and the key of the beats


@dataclass
class Beat:
    started: float | None  # wall time (epoch seconds) of this ingest's first write; None before it
    beat: float  # wall time of its last beat
    running: bool
    offsets: dict[str, int] = field(default_factory=dict)  # each symbol's newest offset written
    watermark: int | None = None  # newest tick time (ns) of the last complete flush
    feed: str | None = None  # a live feed's connection: "subscribed", "retrying in 2 s: ...", ...

    def alive_between(self, since: float, now: float) -> float:
        """Seconds of [since, now] during which ingest delivered (as far as its beats tell)."""
        if self.started is None:
            return 0.0
        return max(0.0, min(now, self.beat) - max(since, self.started))


def read_beat(data_dir: Path, logs: Any = None) -> Beat | None:
    """The last beat ingest wrote to `data_dir` (to Kafka, with `logs` there), or None when
    ingest never ran there."""
    path = Path(data_dir) / BEAT_FILE
    try:
        if logs is not None and logs.is_kafka:
            path = Path(logs.open(HEARTBEATS).location)
            doc = _newest_beat(logs.open(HEARTBEATS))
            if doc is None:
                return None
        else:
            doc = json.loads(path.read_text())
        beat = Beat(
            None if doc["started"] is None else float(doc["started"]),
            float(doc["beat"]),
            bool(doc["running"]),
            {str(s): int(o) for s, o in doc["offsets"].items()},
            None if doc.get("watermark") is None else int(doc["watermark"]),
            None if doc.get("feed") is None else str(doc["feed"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LogError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); delete it (the next `rtml ingest` writes it again)"
        ) from None
    return beat


def _newest_beat(log: Any) -> dict[str, Any] | None:
    """The newest beat document in the heartbeats topic; the older ones are released."""
    last = log.last_offset(BEAT_KEY)
    if last < 0:
        return None
    rows = log.read_after(BEAT_KEY, last - 1)
    log.release(BEAT_KEY, last - 1)
    return json.loads(rows["beat"][-1])


def missing_tail(log_name: str, symbol: str, last: int, expected: int, data_dir: Path) -> str:
    """The error for a partition that ends at `last` though `expected` was written."""
    return (
        f"part {last + 1}-{expected} of {log_name}/{symbol} is missing (ingest wrote offsets up to "
        f"{expected}, the log ends at {last}); restore it. If those ticks were removed on purpose, "
        f"delete {Path(data_dir) / BEAT_FILE} and rebuild what was built from them "
        "(`rtml features --rebuild`)"
    )


class Heartbeat:
    """Beats for one ingest run, from a background thread, so a paced wait still beats."""

    def __init__(
        self,
        data_dir: Path,
        offsets: dict[str, int],
        watermark: int | None = None,
        logs: Any = None,
        feed: Callable[[], str | None] = lambda: None,
    ):
        self.path = Path(data_dir) / BEAT_FILE
        self.logs = logs if logs is not None and logs.is_kafka else None
        self._sink: Any = None  # Kafka: the heartbeats topic's writer
        self.started: float | None = None  # the first write: until then the features clock waits
        self.offsets = dict(offsets)
        self.watermark = watermark  # carried over a restart: what was published stays published
        self.feed = feed  # what a live source's connection is doing
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtml-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.logs is not None:
            self._stack = contextlib.ExitStack()
            self._sink = self._stack.enter_context(self.logs.open(HEARTBEATS).writer())
        self.write(running=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, LogError):  # a full disk, brokers gone: the error that ends the run says so
            self.write(running=False)
        if self._sink is not None:
            self._stack.close()

    def wrote(self, symbol: str, last: int) -> None:
        """Record that `symbol`'s part ending at `last` is published."""
        with self._lock:
            self.offsets[symbol] = last
            if self.started is None:
                self.started = time.time()

    def flushed(self, newest_ns: int) -> None:
        """A flush is complete: every tick up to `newest_ns` that it held is published."""
        with self._lock:
            self.watermark = newest_ns if self.watermark is None else max(self.watermark, newest_ns)

    def write(self, running: bool) -> None:
        with self._lock:
            doc = {
                "pid": os.getpid(),
                "started": self.started,
                "beat": time.time(),
                "running": running,
                "offsets": dict(sorted(self.offsets.items())),
                "watermark": self.watermark,
                "feed": self.feed(),
            }
        if self._sink is None:
            atomic.write_json(self.path, doc)
            return
        import polars as pl

        # (outside the lock: a slow broker must not hold up ingest's flushes, which take it)
        _, last = self._sink.append(BEAT_KEY, pl.DataFrame({"beat": [json.dumps(doc)]}))
        self._sink.log.release(BEAT_KEY, last)

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            with contextlib.suppress(OSError, LogError):  # the next flush reports it; the clock pauses
                self.write(running=True)
