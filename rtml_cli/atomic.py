"""Atomic publication of files that another process may be reading.

A file is written under a temporary name in its final directory, flushed, fsynced, renamed
over its final name with `os.replace`, and the directory is fsynced, so a reader sees either
the old file or the whole new one, and a crash leaves at worst a temporary file behind.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARKER = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A temporary name beside `path` that no reader's glob for the final name matches."""
    return path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}")


def is_temp(path: Path) -> bool:
    return TMP_MARKER in path.name


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make the fully written `tmp` visible as `final`, durably."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


@contextmanager
def exclusive(lock_path: Path, busy: str) -> Iterator[None]:
    """Hold an advisory lock on `lock_path`, or raise LockedError with `busy` (its `{pid}` filled in).

    The lock is an `flock`: the kernel releases it when its owner dies, even by kill -9, so
    a crashed owner never leaves a stale lock behind. The file records the owner's pid for
    the message a second process gets.
    """
    from rtml_cli.errors import LockedError

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(busy.replace("{pid}", holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def holder(lock_path: Path) -> int | None:
    """The pid holding the `exclusive` lock on `lock_path` now, or None.

    It never takes the lock itself (a stage starting at that moment must not be refused): on
    Linux it reads the kernel's table of locks, /proc/locks; elsewhere it trusts the pid
    the owner recorded if that process is alive.
    """
    try:
        st = os.stat(lock_path)
    except OSError:
        return None
    try:
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        table = None
    if table is not None:
        me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in table.splitlines():
            fields = line.split()
            if "->" in fields or "FLOCK" not in fields:
                continue  # a waiter, or another kind of lock
            at = fields.index("FLOCK")
            if len(fields) > at + 4 and fields[at + 4] == me and fields[at + 3].isdigit():
                return int(fields[at + 3])
        return None
    try:
        pid = int(Path(lock_path).read_text().strip() or 0)
        if pid > 0:
            os.kill(pid, 0)
            return pid
    except (OSError, ValueError):
        pass
    return None
