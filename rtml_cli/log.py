"""The Parquet log: append-only, per-symbol partitions of immutable parts with Kafka-style offsets.

Layout: `<data-dir>/<log>/symbol=<percent-encoded symbol>/<first>-<last>-<crc32>.parquet`,
where `first` and `last` are the zero-padded offsets of the part's first and last rows and
`crc32` the checksum of the file's bytes (parts written before checksums have none). Offsets
are strictly increasing within a partition, so the tail after offset N, and the last offset,
come from the directory listing alone.

One writer per log at a time (an advisory `flock`, released by the kernel when its owner
dies, so a crashed writer never leaves a stale lock). Parts are published atomically; a
reader never sees a partial part. Compaction writes a merged part that covers the offsets of
the parts it replaces, then deletes them; readers resolve the overlap in between by taking
the covering part, so they see every row exactly once throughout.

The interface is deliberately small (append, read after an offset, partitions, last
offset, compact) so that a Kafka topic can stand in for it later.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote

from rtml_cli import atomic
from rtml_cli.errors import LogError, SymbolError

if TYPE_CHECKING:
    from datetime import datetime

    import polars as pl

PARTITION_KEY = "symbol"
OFFSET = "offset"
MAX_SYMBOL_LEN = 64
MAX_ENCODED_LEN = 200  # file names may have 255 bytes; "symbol=" and room to spare
_PART_RE = re.compile(r"^(\d{20})-(\d{20})(?:-([0-9a-f]{8}))?\.parquet$")
_LOCK_NAME = ".writer.lock"


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it can name a partition, else raise SymbolError saying why."""
    if not isinstance(symbol, str) or symbol == "":
        raise SymbolError("a symbol name is empty; give names like BTC/USD or ETHUSDT")
    if symbol != symbol.strip():
        raise SymbolError(f"symbol {symbol!r} has leading or trailing spaces; remove them")
    if len(symbol) > MAX_SYMBOL_LEN:
        raise SymbolError(f"symbol {symbol[:20]!r}... is longer than {MAX_SYMBOL_LEN} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in symbol):
        raise SymbolError(f"symbol {symbol!r} contains control characters; use printable names")
    if symbol in (".", ".."):
        raise SymbolError(f"symbol {symbol!r} is not a usable name")
    if len(quote(symbol, safe="").encode()) > MAX_ENCODED_LEN:
        raise SymbolError(f"symbol {symbol[:20]!r}... is too long once percent-encoded for a directory name")
    return symbol


def partition_dirname(symbol: str) -> str:
    """Hive-style directory name with the value percent-encoded, as polars writes it.

    `/`, `%`, `=` and every other byte outside [A-Za-z0-9_.~-] are encoded, so the name
    cannot contain a path separator and DuckDB or polars decode it back to `symbol`.
    """
    return f"{PARTITION_KEY}={quote(check_symbol(symbol), safe='')}"


def symbol_from_dirname(name: str) -> str | None:
    prefix = f"{PARTITION_KEY}="
    if not name.startswith(prefix):
        return None
    return unquote(name[len(prefix) :])


@dataclass(frozen=True, order=True)
class Part:
    first: int
    last: int
    path: Path
    crc: int | None = None  # CRC-32 of the file's bytes, from its name (None: written before checksums)

    @property
    def rows(self) -> int:
        return self.last - self.first + 1

    def verify(self, log: str, symbol: str) -> None:
        """A LogError if the file's bytes are not those it was written with (a flipped bit
        reads as good data otherwise)."""
        if self.crc is None:
            return
        if _crc32(self.path) != self.crc:
            raise LogError(
                f"{self.path} (offsets {self.first}-{self.last} of {log}/{symbol}) is damaged: its bytes "
                "do not match the checksum it was written with; move it aside and restore it, or rebuild "
                "what it held"
            )


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def part_name(first: int, last: int, crc: int | None = None) -> str:
    return f"{first:020d}-{last:020d}.parquet" if crc is None else f"{first:020d}-{last:020d}-{crc:08x}.parquet"


def _live_parts(paths: list[Path]) -> list[Part]:
    """Parse part names and drop parts covered by a larger (compacted) part."""
    parts = []
    for p in paths:
        m = _PART_RE.match(p.name)
        if m:
            parts.append(Part(int(m.group(1)), int(m.group(2)), p, int(m.group(3), 16) if m.group(3) else None))
    # Widest first among parts that start at the same offset, so a covering part wins.
    parts.sort(key=lambda part: (part.first, -part.last))
    live: list[Part] = []
    for part in parts:
        if live and part.last <= live[-1].last:
            continue  # covered by a compacted part whose originals are not deleted yet
        if live and part.first <= live[-1].last:
            raise LogError(
                f"parts {live[-1].path.name} and {part.path.name} overlap partially in "
                f"{part.path.parent}; the log was modified by something other than rtml"
            )
        live.append(part)
    return live


@dataclass
class CompactResult:
    symbol: str
    parts_before: int
    parts_after: int
    rows: int


class LogReads:
    """Reads every backend shares, built on its `partitions`, `last_offset` and `read_after`."""

    def partitions(self) -> list[str]:
        raise NotImplementedError

    def last_offset(self, symbol: str) -> int:
        raise NotImplementedError

    def read_after(
        self,
        symbol: str,
        offset: int = -1,
        columns: list[str] | list[pl.Expr] | None = None,
        upto: int | None = None,
        verified: set[Path] | None = None,
    ) -> pl.DataFrame:
        raise NotImplementedError

    def read_in_time_order(
        self, symbols: list[str], offsets: dict[str, int], chunk: int, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """The next rows of `symbols` after `offsets`, in time order (then symbol, offset).

        At most `chunk` rows per symbol are read, so memory stays bounded however long the
        backlog; a symbol with more to come bounds the batch at its last time read, so that
        reading in chunks gives the same order as one sort of the whole backlog. `columns`
        (which must include ts and symbol) reads only those.
        """
        import polars as pl

        frames, horizon = [], None
        for s in symbols:
            after = offsets.get(s, -1)
            frame = self.read_after(s, after, columns, upto=after + chunk)
            if frame.height == 0:
                continue
            frames.append(frame)
            if self.last_offset(s) > after + chunk:  # more of this symbol to come
                last = cast("datetime", frame["ts"].max())
                horizon = last if horizon is None else min(horizon, last)
        if not frames:
            return pl.DataFrame()
        batch = pl.concat(frames, how="diagonal_relaxed")
        if horizon is not None:
            # strictly before: rows at the horizon's own time may continue past the chunk
            before = batch.filter(pl.col("ts") < horizon)
            batch = before if before.height else batch.filter(pl.col("ts") <= horizon)
        return batch.sort("ts", "symbol", OFFSET)

    def read_all(self, columns: list[str] | None = None) -> pl.DataFrame:
        import polars as pl

        frames = [self.read_after(s, -1, columns) for s in self.partitions()]
        frames = [f for f in frames if f.height]
        return pl.concat(frames, how="vertical") if frames else pl.DataFrame()

    def follow(self, symbol: str, offset: int, stop: Event, poll: float = 0.2) -> Iterator[pl.DataFrame]:
        """Yield each batch of new rows after `offset` until `stop` is set."""
        while not stop.is_set():
            frame = self.read_after(symbol, offset)
            if frame.height:
                offset = int(frame[OFFSET][-1])
                yield frame
            else:
                stop.wait(poll)


class ParquetLog(LogReads):
    """One named log (ticks, features, ...) under a data directory."""

    def __init__(self, data_dir: Path | str, name: str):
        self.data_dir = Path(data_dir)
        self.name = name
        self.root = self.data_dir / name

    def __repr__(self) -> str:
        return f"ParquetLog({str(self.root)!r})"

    # -- reading -------------------------------------------------------------------------

    def partitions(self) -> list[str]:
        """The symbols that have a partition, sorted."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            symbol = symbol_from_dirname(entry.name)
            if symbol is not None and entry.is_dir():
                found.append(symbol)
        return sorted(found)

    def partition_path(self, symbol: str) -> Path:
        return self.root / partition_dirname(symbol)

    def parts(self, symbol: str) -> list[Part]:
        d = self.partition_path(symbol)
        if not d.is_dir():
            return []
        return _live_parts([d / n for n in os.listdir(d)])

    def last_offset(self, symbol: str) -> int:
        """Offset of the newest row of `symbol`, or -1 when the partition is empty."""
        parts = self.parts(symbol)
        return parts[-1].last if parts else -1

    def files_after(self, symbol: str, offset: int = -1, upto: int | None = None) -> list[Path]:
        """The part files holding rows with offsets greater than `offset` (and at most `upto`)."""
        return [p.path for p in self.parts(symbol) if p.last > offset and (upto is None or p.first <= upto)]

    def read_after(
        self,
        symbol: str,
        offset: int = -1,
        columns: list[str] | list[pl.Expr] | None = None,
        upto: int | None = None,
        verified: set[Path] | None = None,
    ) -> pl.DataFrame:
        """Rows with offsets greater than `offset` (and at most `upto`), in offset order.

        `columns` selects columns, or expressions over them, so that polars reads no more
        than it needs. With `verified`, each part not in it is checked against its checksum
        first (and added to it).
        """
        import polars as pl

        bounds = pl.col(OFFSET) > offset
        if upto is not None:
            bounds &= pl.col(OFFSET) <= upto
        gap = None
        for attempt in range(5):
            parts = [p for p in self.parts(symbol) if p.last > offset and (upto is None or p.first <= upto)]
            if not parts:
                return pl.DataFrame()
            gap = _gap(parts, max(offset, -1) + 1)
            if gap is not None:
                # A listing taken while a compaction renamed and deleted may miss parts: list
                # again; a gap that stays is a part that is gone.
                time.sleep(0.01 * (attempt + 1))
                continue
            try:
                for part in parts:
                    if verified is not None and part.path not in verified:
                        part.verify(self.name, symbol)
                        verified.add(part.path)
            except FileNotFoundError:  # replaced by a compaction since the listing: list again
                time.sleep(0.01 * (attempt + 1))
                continue
            try:
                return _scan_parts([p.path for p in parts], lambda q: q.filter(bounds), columns)
            except FileNotFoundError:
                # A compaction replaced parts between our listing and the read: list again.
                time.sleep(0.01 * (attempt + 1))
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise LogError(self._damaged(symbol, parts, exc)) from None
        if gap is not None:
            raise LogError(
                f"part {gap[0]}-{gap[1]} of {self.name}/{symbol} is missing (the parts in "
                f"{self.partition_path(symbol)} skip those offsets); restore it, or rebuild what it held"
            )
        raise LogError(f"{self.partition_path(symbol)} kept changing while being read; try again")

    def _damaged(self, symbol: str, parts: list[Part], exc: Exception) -> str:
        """Which part could not be read, found by reading each alone (only on this error path)."""
        import polars as pl

        for part in parts:
            try:
                pl.read_parquet(part.path)
            except FileNotFoundError:
                continue  # gone since (a compaction): not the culprit
            except (pl.exceptions.PolarsError, OSError) as err:
                why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                return (
                    f"{part.path} (offsets {part.first}-{part.last} of {self.name}/{symbol}) is damaged and "
                    f"cannot be read ({why}); move it aside and restore it, or rebuild what it held"
                )
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"reading {self.name}/{symbol} failed ({why}), though each of its parts reads on its own; try again"

    def row_count(self, symbol: str) -> int:
        return sum(p.rows for p in self.parts(symbol))

    def catch_up(self, symbol: str, offset: int) -> int:
        """The symbol's last offset (a listing is always current: no waiting for `offset`)."""
        return self.last_offset(symbol)

    def release(self, symbol: str, upto: int) -> None:
        """Nothing to do: a Parquet log holds no rows in memory (a Kafka log does)."""

    def first_offset(self, symbol: str) -> int:
        """Offset of the symbol's oldest row (0: a Parquet log keeps every row)."""
        return 0

    @property
    def location(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def poll(self) -> None:
        """Nothing to do: a listing is always current (a Kafka log takes in new messages)."""

    def sync(self, stop: Event | None = None) -> None:
        """Nothing to do (see `poll`)."""

    def close(self) -> None:
        """Nothing held open."""

    def columns(self, symbol: str) -> list[str] | None:
        """The columns of the symbol's newest part, or None when it has none."""
        import polars as pl

        for _ in range(3):
            parts = self.parts(symbol)
            if not parts:
                return None
            try:
                return list(pl.read_parquet_schema(parts[-1].path))
            except FileNotFoundError:
                continue  # compacted away since the listing: look again
        return None

    def tail(self, symbol: str) -> pl.DataFrame | None:
        """The rows of the symbol's newest part (a compaction may merge it with earlier ones),
        or None; a damaged part reads as None (the stages that read it say so)."""
        import polars as pl

        for _ in range(3):
            parts = self.parts(symbol)
            if not parts:
                return None
            try:
                return pl.read_parquet(parts[-1].path)
            except FileNotFoundError:
                continue
            except (pl.exceptions.PolarsError, OSError):
                return None
        return None

    # -- writing -------------------------------------------------------------------------

    def delete(self) -> None:
        """Remove the whole log (refused while a writer holds it)."""
        import shutil

        if self.root.is_dir():
            with self.writer():
                pass
            shutil.rmtree(self.root)

    @contextmanager
    def writer(self) -> Iterator[LogWriter]:
        """Hold the log's writer lock; clean up temp files a crashed writer left behind."""
        busy = f"another rtml process (pid {{pid}}) is writing {self.root}; stop it first, or use another --data-dir"
        with atomic.exclusive(self.root / _LOCK_NAME, busy):
            writer = LogWriter(self)
            writer.remove_orphans()
            yield writer


class LogWriter:
    """Appends to a log while holding its writer lock (get one from `ParquetLog.writer()`)."""

    def __init__(self, log: ParquetLog):
        self.log = log
        self._next: dict[str, int] = {}

    def remove_orphans(self) -> int:
        """Delete temp files and fully covered parts left by a writer that died mid-publish."""
        removed = 0
        if not self.log.root.is_dir():
            return 0
        for entry in self.log.root.iterdir():
            if not entry.is_dir() or symbol_from_dirname(entry.name) is None:
                continue
            names = os.listdir(entry)
            for n in names:
                if atomic.is_temp(Path(n)):
                    (entry / n).unlink(missing_ok=True)
                    removed += 1
            live = {p.path for p in _live_parts([entry / n for n in names])}
            for n in names:
                if _PART_RE.match(n) and entry / n not in live:
                    (entry / n).unlink(missing_ok=True)
                    removed += 1
        return removed

    def next_offset(self, symbol: str) -> int:
        if symbol not in self._next:
            self._next[symbol] = self.log.last_offset(symbol) + 1
        return self._next[symbol]

    def append(self, symbol: str, frame: pl.DataFrame) -> tuple[int, int]:
        """Publish `frame` as one part of `symbol`; returns its (first, last) offsets."""
        import polars as pl

        if frame.height == 0:
            raise LogError("refusing to append an empty batch")
        if OFFSET in frame.columns:
            raise LogError(f"the batch already has an {OFFSET!r} column; the log assigns offsets")
        first = self.next_offset(symbol)
        last = first + frame.height - 1
        frame = frame.select(pl.int_range(first, last + 1, dtype=pl.Int64).alias(OFFSET), pl.all())
        d = self.log.partition_path(symbol)
        d.mkdir(parents=True, exist_ok=True)
        _write_part(frame, d, first, last, level=1)
        self._next[symbol] = last + 1
        return first, last

    def compact(self, symbol: str, target_rows: int = 1_000_000) -> CompactResult:
        """Merge runs of consecutive parts smaller than `target_rows`, keeping offsets."""
        import polars as pl

        parts = self.log.parts(symbol)
        runs: list[list[Part]] = []
        run: list[Part] = []
        for part in parts:
            if part.rows >= target_rows:
                if len(run) > 1:
                    runs.append(run)
                run = []
                continue
            if run and sum(p.rows for p in run) + part.rows > target_rows:
                if len(run) > 1:
                    runs.append(run)
                run = []
            run.append(part)
        if len(run) > 1:
            runs.append(run)
        rows = 0
        for run in runs:
            for p in run:  # never rewrite damaged bytes into a new, trusted part
                p.verify(self.log.name, symbol)
            try:
                merged = _scan_parts([p.path for p in run]).sort(OFFSET)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise LogError(self.log._damaged(symbol, run, exc)) from None
            first, last = run[0].first, run[-1].last
            if merged.height != last - first + 1:
                raise LogError(f"parts {first}..{last} of {symbol!r} have gaps; not compacting")
            target = _write_part(merged, self.log.partition_path(symbol), first, last)
            for p in run:  # readers already prefer the covering part; now drop the originals
                p.path.unlink(missing_ok=True)
            atomic.fsync_dir(target.parent)
            rows += merged.height
        return CompactResult(symbol, len(parts), len(self.log.parts(symbol)), rows)


# Columns a later rtml added to a log's rows: a part written before reads with them as nulls.
ADDED_COLUMNS = {"in_sample": "Boolean"}  # predictions


def _scan_parts(paths: list[Path], where=None, columns=None) -> pl.DataFrame:
    """Parts read as one frame, in the given order (`where` applied to the scan, then `columns`
    selected). Parts written before a column in `ADDED_COLUMNS` existed read with it as nulls;
    any other difference between parts' columns is damage, and raises as before."""
    import polars as pl

    def scan(**kw) -> pl.DataFrame:
        query = pl.scan_parquet(paths, **kw)
        query = where(query) if where is not None else query
        return (query.select(columns) if columns is not None else query).collect()

    try:
        return scan()
    except (pl.exceptions.SchemaError, pl.exceptions.ColumnNotFoundError):
        schema = _evolved_schema([pl.read_parquet_schema(p) for p in paths])
        if schema is None:
            raise
        return scan(schema=schema, missing_columns="insert")


def _evolved_schema(schemas: list[dict[str, Any]]) -> pl.Schema | None:
    """The parts' common schema when they differ only by an added column that older parts lack
    (same types everywhere); None for any other difference."""
    import polars as pl

    union: dict[str, Any] = {}
    for schema in schemas:  # the widest part's columns
        if len(schema) > len(union):
            union = dict(schema)
    for schema in schemas:
        if any(union.get(name) != dtype for name, dtype in schema.items()):
            return None  # a column unknown to the widest part, or another type
        lacking = set(union) - set(schema)
        if any(name not in ADDED_COLUMNS or str(union[name]) != ADDED_COLUMNS[name] for name in lacking):
            return None
    return pl.Schema(union)


def _gap(parts: list[Part], first: int) -> tuple[int, int] | None:
    """The first run of offsets from `first` on that no part holds, or None."""
    expect = first
    for part in parts:
        if part.first > expect:
            return expect, part.first - 1
        expect = part.last + 1
    return None


def _write_part(frame: pl.DataFrame, directory: Path, first: int, last: int, level: int = 3) -> Path:
    """Write a part, named by its offsets and the CRC-32 of its bytes; returns its path.
    Appends use zstd level 1 (twice as fast to write); compaction recompresses at 3."""
    import polars as pl

    path = directory / part_name(first, last)
    tmp = atomic.temp_path_for(path)
    try:
        # Row groups of 64k rows: a reader asking for a range of offsets skips the others
        # by their statistics instead of decoding the whole part.
        frame.write_parquet(tmp, compression="zstd", compression_level=level, statistics=True, row_group_size=65_536)
        path = directory / part_name(first, last, _crc32(tmp))  # just written: read back from the page cache
        atomic.publish(tmp, path)
        return path
    except (pl.exceptions.PolarsError, OSError) as exc:  # a full disk comes as either
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LogError(
            f"cannot write {path} ({why}); nothing of it was published: free space or fix the storage, then run again"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
