"""What predict serves: each model's newest verified checkpoint, and the watcher that loads it.

A loader thread watches each checkpoint directory (filesystem notifications, plus polling as
the fallback that also works on network filesystems), verifies a newer checkpoint and
unpickles it, and only then hands it over by one reference assignment to its `ModelSlot`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any

from rtml_cli.checkpoint import CheckpointError, CheckpointStore
from rtml_cli.models import CLASSIFIER, REGRESSOR

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver


@dataclass(frozen=True)
class Served:
    """A verified, fully loaded model, ready to predict."""

    version: int
    model: Any
    kind: str
    trained_until: str | None
    created_at: str | None


class ModelSlot:
    """One model name: the newest verified version a load found, and what it refused.

    `latest` is written only by `refresh` (the loader thread) and read by the prediction
    loop, which swaps to it between two rows; a reference assignment is atomic, so the
    loop sees either the old model or the whole new one.
    """

    def __init__(self, data_dir: Path, name: str, key: bytes | None):
        self.name = name
        self.store = CheckpointStore(data_dir, name)
        self.key = key
        self.latest: Served | None = None
        self.bad: dict[int, str] = {}  # versions refused, and why; each is reported once
        self.reports: deque[str] = deque()  # refusals not shown yet
        self.events: deque[str] = deque()  # models loaded, not shown yet
        self.failing: str | None = None  # the last problem looking for checkpoints, while it lasts
        self.load_ms: list[float] = []

    def refresh(self) -> bool:
        """Load the newest checkpoint newer than the one held, if one verifies; True if it did."""
        held = self.latest.version if self.latest else 0
        for version in reversed(self.store.versions()):
            if version <= held:
                return False
            if version in self.bad:
                continue
            started = time.perf_counter()
            try:
                cp = self.store.get(version)
                if cp is None:
                    continue  # pruned since the listing
                payload = cp.load(self.key, yielding=True)
                kind = cp.manifest.get("spec", {}).get("kind")
                if kind not in (REGRESSOR, CLASSIFIER):
                    raise CheckpointError(f"{cp.manifest_path.name} names no model kind (regressor or classifier)")
                if cp.manifest.get("diverged") is True:
                    why = (cp.manifest.get("health") or {}).get("diverged") or {}
                    raise CheckpointError(
                        f"{cp.manifest_path.name} is of a model that diverged"
                        + (f" at example {why['at_example']:,} ({why['why']})" if why else "")
                        + "; the last healthy version serves on"
                    )
            except CheckpointError as exc:
                if not (self.store.dir / f"{version:010d}.json").exists():
                    continue  # pruned while being read: not a bad checkpoint
                self.bad[version] = str(exc)
                self.reports.append(f"{self.name}: skipped {exc}")
                continue
            self.load_ms.append((time.perf_counter() - started) * 1000)
            self.events.append(
                f"{self.name}: loaded v{version} (trained until "
                f"{str(cp.manifest.get('trained_until'))[:19]}) in {self.load_ms[-1]:.0f} ms"
            )
            self.latest = Served(
                version, payload["model"], kind, cp.manifest.get("trained_until"), cp.manifest.get("created_at")
            )
            return True
        return False


class Notifier:
    """Sets an event when files change in some directories, from the OS's filesystem
    notifications (watchdog: inotify, FSEvents, ReadDirectoryChangesW).

    It only wakes waiters up early: every waiter also polls, because network filesystems
    send no notifications. Directories that do not exist yet are watched once they do.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._wanted: list[tuple[Path, Event, bool]] = []
        self._watched: set[Path] = set()
        self._observer: BaseObserver | None = None

    def add(self, path: Path, event: Event, recursive: bool) -> None:
        self._wanted.append((path, event, recursive))

    def start(self) -> None:
        if not self.enabled:
            return
        from watchdog.observers import Observer

        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self.rescan()

    def rescan(self) -> None:
        """Watch the wanted directories that exist now (cheap when all are watched)."""
        if self._observer is None or len(self._watched) == len(self._wanted):
            return
        from watchdog.events import FileSystemEventHandler

        class Wake(FileSystemEventHandler):
            def __init__(self, event: Event):
                self.event = event

            def on_any_event(self, _e) -> None:
                self.event.set()

        for path, event, recursive in self._wanted:
            if path in self._watched or not path.is_dir():
                continue
            try:
                self._observer.schedule(Wake(event), str(path), recursive=recursive)
            except OSError:
                continue  # e.g. out of inotify watches: polling still works
            self._watched.add(path)
            event.set()  # changes made before the watch began are looked at once

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)


class CheckpointWatcher:
    """The loader thread: wakes on a change in a checkpoint directory (or every `poll` s),
    loads what is newer into each slot, and sets the predictor's `wake` when it did."""

    def __init__(self, slots: list[ModelSlot], poll: float, notify: bool):
        self.slots = slots
        self.poll = poll
        self.changed = Event()  # a checkpoint directory changed: look for a newer model
        self.notifier = Notifier(notify)
        self._thread: threading.Thread | None = None
        self._stop = Event()
        self._wake = Event()

    def start(self, wake: Event, features_root: Path | None) -> None:
        """Load into the slots from now on; set `wake` for a new model or new feature rows (of a
        Parquet log in `features_root`; a Kafka log is polled)."""
        self._wake = wake
        for slot in self.slots:
            self.notifier.add(slot.store.dir, self.changed, recursive=False)
        if features_root is not None:
            self.notifier.add(features_root, wake, recursive=True)
        self.notifier.start()
        self._thread = threading.Thread(target=self._run, name="rtml-model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.notifier.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.changed.wait(self.poll)
            self.changed.clear()
            if self._stop.is_set():
                return
            for slot in self.slots:
                try:
                    self.notifier.rescan()
                    if slot.refresh():
                        self._wake.set()
                    slot.failing = None
                except Exception as exc:
                    problem = (
                        f"{slot.name}: cannot look for checkpoints in {slot.store.dir}: {type(exc).__name__}: {exc}"
                    )
                    if problem != slot.failing:  # said once, until it changes or goes away
                        slot.reports.append(problem)
                        slot.failing = problem
