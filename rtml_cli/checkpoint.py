"""The checkpoint store: atomic, verifiable model pickles with JSON manifests, one trainer at a time.

Layout: `<data-dir>/checkpoints/<name>/<version>.pkl` and `<version>.json`. The pickle is
published first, the manifest last: the manifest is the commit point, and the newest
manifest whose pickle verifies is the newest model. Readers check the pickle's sha256 (and,
when `RTML_CHECKPOINT_KEY` is set, its HMAC-SHA256) *before* unpickling, because unpickling
runs code: a pickle from an untrusted writer is arbitrary code execution.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import os
import pickle
import platform
import re
import signal
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rtml_cli import __version__, atomic
from rtml_cli.errors import RtmlError

KEY_ENV = "RTML_CHECKPOINT_KEY"
_MANIFEST_RE = re.compile(r"^(\d{10})\.json$")
_LOCK = ".train.lock"


class CheckpointError(RtmlError):
    """A checkpoint that fails verification, or cannot be loaded here."""


def river_version() -> str:
    import river

    return river.__version__


def runtime_versions() -> dict[str, str]:
    return {"rtml": __version__, "river": river_version(), "python": platform.python_version()}


def signing_key() -> bytes | None:
    key = os.environ.get(KEY_ENV)
    if key is None:
        return None
    if not key:
        raise RtmlError(f"{KEY_ENV} is set but empty; set it to your secret, or unset it to sign nothing")
    return key.encode()


@dataclass
class Checkpoint:
    """One committed checkpoint, as its manifest describes it."""

    version: int
    manifest: dict[str, Any]
    manifest_path: Path
    pickle_path: Path

    def verify(self, key: bytes | None = None) -> bytes:
        """The pickle's bytes, if they are exactly what the manifest committed; else CheckpointError."""
        m = self.manifest
        info = m.get("pickle") if isinstance(m, dict) else None
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("size"), int)
            or not isinstance(info.get("sha256"), str)
        ):
            raise CheckpointError(f"{self.manifest_path.name} is not an rtml manifest (no pickle size and sha256)")
        try:
            data = self.pickle_path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{self.pickle_path.name} is missing") from None
        if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CheckpointError(f"{self.pickle_path.name} does not match the sha256 in {self.manifest_path.name}")
        if key is not None:
            signature = m.get("signature")
            if not isinstance(signature, str) or not signature:
                raise CheckpointError(f"{self.manifest_path.name} is not signed and {KEY_ENV} is set")
            if not hmac.compare_digest(signature.encode(errors="replace"), _sign(key, m).encode()):
                raise CheckpointError(f"{self.manifest_path.name} has a wrong signature for {KEY_ENV}")
        if m.get("version") != self.version:
            raise CheckpointError(f"{self.manifest_path.name} says it is version {m.get('version')!r}")
        return data

    def verification(self, key: bytes | None = None) -> str:
        """'ok' when the checkpoint verifies (with `key`, its signature too), else why not."""
        try:
            self.verify(key)
        except CheckpointError as exc:
            return str(exc)
        return "ok"

    def foreign(self, key: bytes | None) -> str | None:
        """Why an intact checkpoint cannot be loaded here (signed with another key, written by
        another River version), or None. Such a checkpoint is somebody's good model: retention
        never deletes it."""
        try:
            self.verify(None)  # the pickle is what its manifest committed
        except CheckpointError:
            return None
        versions = self.manifest.get("versions")
        wrote = versions.get("river") if isinstance(versions, dict) else None
        if wrote != river_version():
            return f"written by river {wrote}"
        if key is not None:
            try:
                self.verify(key)
            except CheckpointError as exc:
                return str(exc)
        return None

    def load(self, key: bytes | None = None, yielding: bool = False) -> dict[str, Any]:
        """Verify, check the River version and the manifest, and only then unpickle the payload.

        `yielding` is for a load beside a thread that must keep running (hot swap): see `_unpickle`.
        """
        data = self.verify(key)  # the very bytes that are unpickled below: no window to swap the file
        m = self.manifest
        versions = m.get("versions")
        wrote = versions.get("river") if isinstance(versions, dict) else None
        here = river_version()
        if wrote != here:
            raise CheckpointError(
                f"{self.manifest_path.name} was written by river {wrote}, this is river {here}: "
                f"River pickles do not load across versions; install river=={wrote} or train afresh"
            )
        offsets = m.get("offsets", {})
        if (
            not isinstance(m.get("examples_learned", 0), int)
            or not isinstance(offsets, dict)
            or not all(isinstance(k, str) and isinstance(v, int) for k, v in offsets.items())
            or not isinstance(m.get("spec", {}), dict)
        ):
            raise CheckpointError(f"{self.manifest_path.name} has fields of the wrong type; it was not written by rtml")
        try:
            payload = _unpickle(data, yielding)
        except Exception as exc:
            raise CheckpointError(f"{self.pickle_path.name} does not unpickle: {type(exc).__name__}: {exc}") from None
        if not isinstance(payload, dict) or "model" not in payload:
            raise CheckpointError(f"{self.pickle_path.name} is not an rtml checkpoint")
        return payload


class CheckpointStore:
    """The checkpoints of one model name."""

    def __init__(self, data_dir: Path, name: str):
        if not name or "/" in name or name.startswith(".") or not name.isprintable():
            raise RtmlError(
                f"checkpoint name {name!r} is not usable: no '/', no leading '.', printable characters only"
            )
        self.dir = Path(data_dir) / "checkpoints" / name
        self.name = name

    def list(self) -> list[Checkpoint]:
        """Committed checkpoints (those with a readable manifest), oldest first."""
        found = []
        for version in self.versions():
            try:
                cp = self.get(version)
            except CheckpointError:
                continue  # unreadable manifests are reported by `rtml checkpoints`, not loaded
            if cp is not None:
                found.append(cp)
        return found

    def versions(self) -> builtins.list[int]:
        """Versions with a manifest on disk, oldest first, from the directory listing alone."""
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for m in map(_MANIFEST_RE.match, os.listdir(self.dir)) if m)

    def get(self, version: int) -> Checkpoint | None:
        """One checkpoint by version; None if it is not there (never was, or pruned)."""
        path = self.dir / f"{version:010d}.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not readable JSON ({type(exc).__name__})") from None
        if not isinstance(manifest, dict):
            raise CheckpointError(f"{path.name} is not an rtml manifest")
        return Checkpoint(version, manifest, path, path.with_suffix(".pkl"))

    def manifests_on_disk(self) -> builtins.list[Path]:
        return sorted(p for p in self.dir.glob("*.json") if _MANIFEST_RE.match(p.name)) if self.dir.is_dir() else []

    def latest_valid(
        self, key: bytes | None = None
    ) -> tuple[Checkpoint | None, dict[str, Any] | None, builtins.list[str]]:
        """The newest checkpoint that verifies and loads, its payload, and why newer ones did not."""
        problems: builtins.list[str] = []
        for cp in reversed(self.list()):
            try:
                return cp, cp.load(key), problems
            except CheckpointError as exc:
                problems.append(str(exc))
        return None, None, problems

    def next_version(self) -> int:
        versions = (
            [int(p.stem) for p in self.dir.glob("*.json") if _MANIFEST_RE.match(p.name)] if self.dir.is_dir() else []
        )
        pickles = [int(p.stem) for p in self.dir.glob("*.pkl") if p.stem.isdigit()] if self.dir.is_dir() else []
        return max(versions + pickles, default=0) + 1

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One trainer per checkpoint directory; the kernel drops the lock if its owner dies."""
        busy = f"another `rtml train` (pid {{pid}}) is training into {self.dir}; stop it, or use --name"
        with atomic.exclusive(self.dir / _LOCK, busy):
            for path in self.dir.iterdir():
                if atomic.is_temp(path):
                    path.unlink(missing_ok=True)  # left by a writer that died mid-write
                elif path.suffix == ".pkl" and not path.with_suffix(".json").exists():
                    path.unlink(missing_ok=True)  # published, never committed: its writer died first
            yield

    def prune(self, keep: int) -> builtins.list[int]:
        """Delete all but the newest `keep` committed versions (never the newest valid one,
        nor the newest valid one of a healthy model, which `rtml predict` serves while the
        newer ones are of a model that diverged, nor one that is intact but signed with
        another key or written by another River version)."""
        committed = self.list()
        doomed = committed[:-keep] if keep > 0 else []
        kept = committed[len(doomed) :]
        for wanted in (_verifies, lambda cp: _healthy(cp) and _verifies(cp)):
            if doomed and not any(wanted(cp) for cp in reversed(kept)):
                # the newest ones are all broken (or diverged): spare the newest that is not
                survivor = next((cp for cp in reversed(doomed) if wanted(cp)), None)
                if survivor is not None:
                    doomed = [cp for cp in doomed if cp is not survivor]
                    kept.append(survivor)
        removed = []
        key = signing_key()
        for cp in doomed:
            if cp.foreign(key):
                continue  # a good model under another key or River version: not ours to delete
            cp.manifest_path.unlink(missing_ok=True)  # the commit point goes first
            cp.pickle_path.unlink(missing_ok=True)
            removed.append(cp.version)
        return removed


def _unpickle(data: bytes, yielding: bool) -> Any:
    """Unpickle with the garbage collector paused, and, if `yielding`, let other threads run.

    Unpickling a big model (a forest: millions of objects) triggers collection after
    collection over the objects already made: measured, 1.6 s of a 1.7 s load. The C
    unpickler then holds the interpreter lock for the whole load, stalling every other
    thread; the pure-Python one (`pickle._Unpickler`, the standard library's reference
    implementation) runs bytecode, so the interpreter switches threads every few
    milliseconds. It is about twice as slow, so small pickles, which load in well under a
    millisecond, keep the C one.
    """
    import gc
    import io

    enabled = gc.isenabled()
    gc.disable()
    try:
        if yielding and len(data) > 1_000_000:
            return pickle._Unpickler(io.BytesIO(data)).load()
        return pickle.loads(data)
    finally:
        if enabled:
            gc.enable()


def _sign(key: bytes, manifest: dict[str, Any]) -> str:
    """HMAC-SHA256 over the whole manifest but its signature: the pickle's sha256 and size,
    the version, the offsets and counts, so none of them can be changed without the key."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _healthy(cp: Checkpoint) -> bool:
    return cp.manifest.get("diverged") is not True


def _verifies(cp: Checkpoint) -> bool:
    try:
        cp.verify(signing_key())
        return True
    except CheckpointError:
        return False


def write_checkpoint(directory: Path, version: int, data: bytes, manifest: dict[str, Any], key: bytes | None) -> float:
    """Publish pickle bytes, then the manifest that commits them; returns the seconds it took."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{version:010d}"
    manifest = dict(manifest)
    manifest["pickle"] = {"file": f"{stem}.pkl", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic.write_bytes(directory / f"{stem}.pkl", data)
    manifest["write_seconds"] = round(time.perf_counter() - started, 6)
    manifest = json.loads(json.dumps(manifest, default=str))  # exactly what readers will see
    if key is not None:
        manifest["signature"] = _sign(key, manifest)
    atomic.write_json(directory / f"{stem}.json", manifest)
    return time.perf_counter() - started


class _WriterProcess:
    """A child process that writes checkpoints handed to it over a pipe.

    File writes and fsyncs done by a thread of the trainer would keep taking the GIL back
    from the training loop (measured: 30% fewer examples a second with a checkpoint every
    1,000); in a process of their own they cost the trainer only the pipe write.
    """

    def __init__(self, store: CheckpointStore, keep: int, key: bytes | None):
        req_r, req_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: serve requests until the trainer closes the pipe
            _child_signals()
            os.close(req_w)
            os.close(ack_r)
            code = 1
            try:
                _serve(req_r, ack_w, store, keep, key)
                code = 0
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(ack_w)
        os.set_blocking(ack_r, False)
        self.pid, self._req, self._ack = pid, req_w, ack_r
        self._buffer = b""

    def submit(self, version: int, data: bytes, manifest: dict[str, Any]) -> None:
        header = json.dumps({"version": version, "manifest": manifest}, default=str).encode()
        _write_all(self._req, struct.pack(">QQ", len(header), len(data)) + header + data)

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def poll(self) -> list[dict[str, Any]]:
        """Acknowledgements that have arrived: {"version", "ok", "error"}."""
        try:
            while chunk := os.read(self._ack, 65536):
                self._buffer += chunk
        except BlockingIOError:
            pass
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def abandon(self) -> None:
        """Forget a writer that died: close the pipes, reap it if it has not been reaped."""
        for fd in (self._req, self._ack):
            with suppress(OSError):
                os.close(fd)
        with suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)

    def close(self) -> list[dict[str, Any]]:
        os.close(self._req)  # end of requests: the writer finishes and exits
        _, status = os.waitpid(self.pid, 0)
        os.set_blocking(self._ack, True)
        rest = b""
        while chunk := os.read(self._ack, 65536):
            rest += chunk
        os.close(self._ack)
        acks = [json.loads(line) for line in (self._buffer + rest).split(b"\n") if line]
        if os.waitstatus_to_exitcode(status) != 0:
            acks.append({"version": None, "ok": False, "error": "the checkpoint writer process failed"})
        return acks


def _child_signals() -> None:
    """A writer child finishes its write: Ctrl-C in the terminal is for the trainer, which
    then closes the pipe; SIGTERM ends the child as usual."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _serve(req: int, ack: int, store: CheckpointStore, keep: int, key: bytes | None) -> None:
    while (sizes := _read_exactly(req, 16)) is not None:
        header_len, data_len = struct.unpack(">QQ", sizes)
        raw_header = _read_exactly(req, header_len)
        data = _read_exactly(req, data_len) if raw_header is not None else None
        if raw_header is None or data is None:
            return  # the trainer died mid-message: a partial pickle is never written
        header = json.loads(raw_header)
        try:
            write_checkpoint(store.dir, header["version"], data, header["manifest"], key)
            store.prune(keep)
            reply = {"version": header["version"], "ok": True}
        except OSError as exc:
            reply = {"version": header["version"], "ok": False, "error": str(exc)}
        _write_all(ack, json.dumps(reply).encode() + b"\n")


class Checkpointer:
    """Takes snapshots without stalling training; another process writes them.

    A snapshot is `pickle.dumps` of the payload in the training loop while that is cheap
    (a linear model: a fraction of a millisecond); the bytes go down a pipe to a writer
    process. Once a pickle costs more than `inline_limit` seconds of CPU (a big forest),
    snapshots are taken by `os.fork()` instead: the child holds a copy-on-write image of the
    model as it was, pickles and writes it, and exits, while the parent trains on. One write
    is in flight at a time; the stall (time the training loop was held) is measured for
    every checkpoint.
    """

    def __init__(self, store: CheckpointStore, keep: int = 10, key: bytes | None = None, inline_limit: float = 0.005):
        self.store = store
        self.keep = keep
        self.key = key
        self.inline_limit = inline_limit
        self.use_fork = False
        self.version = store.next_version()
        self.stalls_ms: list[float] = []
        self.written: list[int] = []
        self.failures: list[str] = []
        # started now, so that no checkpoint's stall includes starting it
        self._writer: _WriterProcess | None = _WriterProcess(store, keep, key)
        self._in_flight: int | None = None  # version handed to the writer process
        self._child: tuple[int, int] | None = None  # (pid, version) of a forked snapshot

    def busy(self) -> bool:
        self._reap()
        return self._in_flight is not None or self._child is not None

    def snapshot(self, payload: dict[str, Any], manifest: dict[str, Any]) -> int | None:
        """Start writing a checkpoint of `payload`; returns its version, or None if one is in flight."""
        if self.busy():
            return None
        version = self.version
        self.version += 1
        manifest = {**manifest, "version": version, "created_at": datetime.now(UTC).isoformat()}
        started = time.perf_counter()
        if self.use_fork:
            pid = os.fork()
            if pid == 0:  # the child: write the image it inherited, then leave without cleanup
                _child_signals()
                code = 1
                try:
                    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                    write_checkpoint(self.store.dir, version, data, manifest, self.key)
                    self.store.prune(self.keep)
                    code = 0
                finally:
                    os._exit(code)
            self._child = (pid, version)
            self.stalls_ms.append((time.perf_counter() - started) * 1000)
            return version
        cpu = time.thread_time()
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        # what the pickle cost in CPU, not in wall time: a busy machine or a paused process
        # (SIGSTOP, a laptop's sleep) must not make a small model look like a big one
        if time.thread_time() - cpu > self.inline_limit:
            self.use_fork = True  # the model has outgrown inline snapshots
        if self._writer is None:
            self._writer = _WriterProcess(self.store, self.keep, self.key)
        try:
            self._writer.submit(version, data, manifest)
        except OSError as exc:  # the writer is gone (BrokenPipeError): start another next time
            self._writer_died(version, f"the writer process is gone ({exc})")
            return None
        self._in_flight = version
        self.stalls_ms.append((time.perf_counter() - started) * 1000)
        return version

    def _acknowledge(self, acks: list[dict[str, Any]]) -> None:
        for ack in acks:
            if ack.get("ok"):
                self.written.append(ack["version"])
            else:
                self.failures.append(f"checkpoint {ack.get('version')}: {ack.get('error')}")
            if ack.get("version") == self._in_flight:
                self._in_flight = None

    def _child_done(self, status: int) -> None:
        assert self._child is not None
        version = self._child[1]
        self._child = None
        if os.waitstatus_to_exitcode(status) == 0:
            self.written.append(version)
        else:
            self.failures.append(f"checkpoint {version}: the writer process failed")

    def _writer_died(self, version: int | None, why: str) -> None:
        self.failures.append(f"checkpoint {version}: {why}")
        if self._writer is not None:
            self._writer.abandon()
        self._writer = None
        self._in_flight = None

    def _reap(self) -> None:
        if self._in_flight is not None and self._writer is not None:
            self._acknowledge(self._writer.poll())
            if self._in_flight is not None and not self._writer.alive():
                self._acknowledge(self._writer.poll())  # what it said before it went
                if self._in_flight is not None:
                    self._writer_died(self._in_flight, "the writer process died before writing it")
        if self._child is not None:
            done, status = os.waitpid(self._child[0], os.WNOHANG)
            if done:
                self._child_done(status)

    def wait(self) -> None:
        """Block until the write in flight, if any, is done."""
        if self._child is not None:
            _, status = os.waitpid(self._child[0], 0)
            self._child_done(status)
        while self._in_flight is not None and self._writer is not None:
            self._reap()
            if self._in_flight is not None:
                time.sleep(0.001)

    def close(self) -> None:
        """Finish every write and stop the writer process."""
        self.wait()
        if self._writer is not None:
            try:
                self._acknowledge(self._writer.close())
            except OSError as exc:
                self.failures.append(f"the writer process: {exc}")
            self._writer = None
