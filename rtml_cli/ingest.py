"""The ingest stage: source -> validate -> de-duplicate -> batch -> ticks log (+ quarantine)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rtml_cli import atomic
from rtml_cli.beat import Heartbeat, missing_tail, read_beat
from rtml_cli.errors import LogError, SymbolError
from rtml_cli.log import LogWriter, check_symbol
from rtml_cli.logs import LogStore, store_for
from rtml_cli.schema import MAX_JUMP_SECONDS, TICK_COLUMNS, isolated_in_time, problems, tick_schema
from rtml_cli.sources import Source, TickBatch, feed_state

if TYPE_CHECKING:
    import polars as pl

TICKS = "ticks"
QUARANTINE = "quarantine"
_HASH_SEED = 0x5EED


@dataclass
class IngestOptions:
    flush_every: int = 100_000
    flush_interval: float = 1.0
    max_ticks: int | None = None
    duration: float | None = None
    symbols: list[str] | None = None  # keep only these (None: all)


@dataclass
class SymbolStats:
    written: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    last_price: float | None = None
    last_offset: int = -1


@dataclass
class IngestSummary:
    source: str
    data_dir: str
    written: int = 0
    quarantined: Counter = field(default_factory=Counter)
    skipped_other_symbols: int = 0
    flushes: int = 0
    parts: int = 0
    gaps: list[str] = field(default_factory=list)
    symbols: dict[str, SymbolStats] = field(default_factory=dict)
    stopped_by: str = "end of input"
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    quarantine_files: list[str] = field(default_factory=list)
    received: int = 0  # rows seen, good or bad

    @property
    def rate(self) -> float:
        return self.written / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "data_dir": self.data_dir,
            "written": self.written,
            "received": self.received,
            "quarantined": dict(sorted(self.quarantined.items())),
            "quarantined_total": sum(self.quarantined.values()),
            "skipped_other_symbols": self.skipped_other_symbols,
            "flushes": self.flushes,
            "parts": self.parts,
            "gaps": self.gaps,
            "stopped_by": self.stopped_by,
            "elapsed_s": round(self.elapsed, 3),
            "ticks_per_s": round(self.rate, 1),
            "quarantine_files": self.quarantine_files,
            "symbols": {
                s: {
                    "written": st.written,
                    "first_ts": st.first_ts.isoformat() if st.first_ts else None,
                    "last_ts": st.last_ts.isoformat() if st.last_ts else None,
                    "last_price": st.last_price,
                    "last_offset": st.last_offset,
                }
                for s, st in sorted(self.symbols.items())
            },
        }


class TradeIdIndex:
    """The trade ids already in the log, per symbol, as a sorted array of 64-bit hashes.

    Loaded lazily from the log's `trade_id` column the first time a symbol is seen, it costs
    8 bytes per tick of that symbol's history. The hash is polars' own, which is stable
    within one polars version, and the index is rebuilt from the log at every start, so it
    never outlives the version that built it. Two different ids colliding in 64 bits is
    astronomically unlikely at these sizes (about 1e-7 for ten million ids); should it
    happen, the tick would be quarantined as a duplicate, visibly, not dropped.
    """

    def __init__(self, log: Any):
        self.log = log
        # Per symbol, sorted runs of hashes, each at least twice the size of the next, so
        # there are O(log n) runs and every id is re-merged O(log n) times in all.
        self._runs: dict[str, list[np.ndarray]] = {}

    @staticmethod
    def hashes(ids: pl.Series) -> np.ndarray:
        return ids.hash(seed=_HASH_SEED).to_numpy()

    def _load(self, symbol: str) -> list[np.ndarray]:
        if symbol not in self._runs:
            existing = self.log.read_after(symbol, -1, columns=["trade_id"])
            self._runs[symbol] = [np.sort(self.hashes(existing["trade_id"]))] if existing.height else []
        return self._runs[symbol]

    def contains(self, symbol: str, h: np.ndarray) -> np.ndarray:
        found = np.zeros(h.size, dtype=bool)
        for run in self._load(symbol):
            pos = np.searchsorted(run, h)
            pos[pos == run.size] = 0
            found |= run[pos] == h
        return found

    def add(self, symbol: str, h: np.ndarray) -> None:
        runs = self._load(symbol)
        runs.append(np.sort(h))
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            newer = runs.pop()
            # timsort merges the two sorted runs in linear time
            runs[-1] = np.sort(np.concatenate([runs[-1], newer]), kind="stable")


_QUARANTINE_SEQ = itertools.count(1)


class Quarantine:
    """Rejected records with their reason, as Parquet files under `<data-dir>/quarantine/`."""

    def __init__(self, data_dir: Path, log_name: str):
        self.dir = Path(data_dir) / QUARANTINE
        self.log_name = log_name

    def write(self, frame: pl.DataFrame) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        # The sequence number is per process, not per run: two runs in one process and one
        # second must not replace each other's file.
        path = self.dir / f"{self.log_name}-{stamp}-{os.getpid()}-{next(_QUARANTINE_SEQ):06d}.parquet"
        tmp = atomic.temp_path_for(path)
        try:
            frame.write_parquet(tmp)
            atomic.publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def read_quarantine(data_dir: Path) -> pl.DataFrame:
    import polars as pl

    qdir = Path(data_dir) / QUARANTINE
    files = sorted(p for p in qdir.glob("*.parquet")) if qdir.is_dir() else []
    return pl.read_parquet(files) if files else pl.DataFrame()


class _Pipeline:
    def __init__(
        self,
        writer: LogWriter,
        quarantine: Quarantine,
        opts: IngestOptions,
        summary: IngestSummary,
        beat: Heartbeat | None = None,
    ):
        self.writer = writer
        self.beat = beat
        self.quarantine = quarantine
        self.opts = opts
        self.summary = summary
        self.index = TradeIdIndex(writer.log)
        self.good: list[pl.DataFrame] = []
        self.bad: list[pl.DataFrame] = []
        self.buffered = 0
        self.last_flush = time.monotonic()
        self.symbol_ok: dict[str, str | None] = {}  # symbol -> None if fine, else the reason
        self.last_ts: dict[str, int] = {}  # symbol -> time (ns) of its newest tick judged plausible
        self.keep = set(opts.symbols) if opts.symbols else None

    def _symbol_problem(self, symbol: str | None) -> str | None:
        if symbol is None:
            return "bad_symbol"
        if symbol not in self.symbol_ok:
            try:
                check_symbol(symbol)
                self.symbol_ok[symbol] = None
            except SymbolError:
                self.symbol_ok[symbol] = "bad_symbol"
        return self.symbol_ok[symbol]

    def accept(self, batch: TickBatch) -> int:
        """Validate a batch into the buffers; returns how many good ticks it added."""
        import polars as pl

        frame = batch.frame
        self.summary.gaps.extend(batch.gaps)
        if frame.height == 0:
            return 0
        if self.keep is not None:
            inside = frame["symbol"].is_in(list(self.keep))
            self.summary.skipped_other_symbols += int((~inside).sum())
            frame = frame.filter(inside)
        self.summary.received += frame.height
        reason = frame.select(problems(frame)).to_series()
        bad_symbols = [s for s in frame["symbol"].unique().to_list() if self._symbol_problem(s)]
        if bad_symbols:
            reason = pl.select(
                pl.when(frame["symbol"].is_in(bad_symbols) | frame["symbol"].is_null())
                .then(pl.lit("bad_symbol"))
                .otherwise(reason)
            ).to_series()
        frame = frame.with_columns(_reason=reason)
        frame = self._mark_duplicates(frame)
        good = frame.filter(pl.col("_reason").is_null())
        if self.opts.max_ticks is not None:
            room = self.opts.max_ticks - self.summary.written - self.buffered
            good = good.head(max(room, 0))
        bad = frame.filter(pl.col("_reason").is_not_null())
        if bad.height:
            self.bad.append(
                bad.select(
                    pl.lit(datetime.now(UTC)).alias("quarantined_at"),
                    pl.lit(self.summary.source).alias("source"),
                    pl.col("_reason").alias("reason"),
                    batch.where.alias("where"),
                    pl.col("symbol"),
                    batch.raw.alias("raw"),
                )
            )
            self.summary.quarantined.update(bad["_reason"].to_list())
        if good.height:
            good = good.select(TICK_COLUMNS).cast(tick_schema())
            for (sym,), part in good.group_by("symbol", maintain_order=True):
                self.index.add(sym, TradeIdIndex.hashes(part["trade_id"]))
            self.good.append(good)
            self.buffered += good.height
        return good.height

    def judge_time(self, batch: TickBatch) -> TickBatch:
        """Mark a tick stamped more than MAX_JUMP_SECONDS from both its neighbours (in its
        symbol's arrival order, over the whole batch) as implausible_ts; remember each
        symbol's newest plausible time for the next batch. Each symbol's last tick of a batch
        has no known next neighbour and is not judged."""
        import polars as pl

        frame = batch.frame
        if frame.height == 0:
            return batch
        # among the ticks with no other problem (those keep their own reason)
        rows = frame.with_row_index("_i").with_columns(_other=problems(frame)).filter(pl.col("_other").is_null())
        if rows.height == 0:
            return batch
        flagged = []
        for (sym,), part in rows.select("_i", "symbol", pl.col("ts").dt.epoch("ns").alias("t")).group_by(
            "symbol", maintain_order=True
        ):
            t = part["t"].to_numpy()
            odd = isolated_in_time(t, self.last_ts.get(sym), int(MAX_JUMP_SECONDS * 1e9))
            flagged.append(part["_i"].to_numpy()[odd])
            ok = t[~odd]
            if ok.size:
                self.last_ts[sym] = int(ok[-1])
        odd_rows = np.concatenate(flagged)
        if odd_rows.size == 0:
            return batch
        mask = np.zeros(frame.height, dtype=bool)
        mask[odd_rows] = True
        frame = frame.with_columns(
            _parse_problem=pl.when(pl.Series(mask)).then(pl.lit("implausible_ts")).otherwise("_parse_problem")
        )
        return dataclasses.replace(batch, frame=frame)

    def _mark_duplicates(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Mark repeated trade ids, within the batch and against the log, as duplicates."""
        import polars as pl

        rows = frame.with_row_index("_i").filter(pl.col("_reason").is_null())
        if rows.height == 0:
            return frame
        hashes = TradeIdIndex.hashes(rows["trade_id"])
        index = rows["_i"].to_numpy()
        dup_rows = []
        for (sym,), pos in rows.select("symbol").with_row_index("_p").group_by("symbol"):
            at = pos["_p"].to_numpy()
            # Sorted hashes: repeats within the batch are neighbours, and the log lookup
            # walks the index in order (far fewer cache misses than random probes).
            order = np.argsort(hashes[at], kind="stable")
            h = hashes[at][order]
            dup = np.zeros(h.size, dtype=bool)
            dup[1:] = h[1:] == h[:-1]  # the first occurrence (stable order) is kept
            dup |= self.index.contains(sym, h)
            dup_rows.append(index[at[order][dup]])
        dups = np.concatenate(dup_rows)
        if dups.size == 0:
            return frame
        is_dup = np.zeros(frame.height, dtype=bool)
        is_dup[dups] = True
        return frame.with_columns(
            _reason=pl.when(pl.Series(is_dup)).then(pl.lit("duplicate_trade_id")).otherwise("_reason")
        )

    def due(self) -> bool:
        return self.buffered >= self.opts.flush_every or (
            self.buffered + len(self.bad) > 0 and time.monotonic() - self.last_flush >= self.opts.flush_interval
        )

    def flush(self) -> None:
        import polars as pl

        self.last_flush = time.monotonic()
        if self.good:
            pending = pl.concat(self.good).partition_by("symbol", as_dict=True, maintain_order=True)
            for (sym,), part in pending.items():
                try:
                    _first, last = self.writer.append(sym, part)
                except OSError as exc:
                    raise LogError(
                        f"could not write to {self.writer.log.location}: {exc.strerror or exc}; "
                        f"{self.buffered:,} ticks received since the last write were not written"
                    ) from None
                self.writer.log.release(sym, last)  # ingest never reads back what it wrote
                if self.beat is not None:
                    self.beat.wrote(sym, last)
                # Written: drop it from the buffer at once, so a retry cannot write it twice.
                self.good = [f.filter(pl.col("symbol") != sym) for f in self.good]
                self.good = [f for f in self.good if f.height]
                self.buffered -= part.height
                self.summary.written += part.height
                st = self.summary.symbols.setdefault(sym, SymbolStats())
                st.written += part.height
                ts_min, ts_max = cast(datetime, part["ts"].min()), cast(datetime, part["ts"].max())
                st.first_ts = ts_min if st.first_ts is None else min(st.first_ts, ts_min)
                st.last_ts = ts_max if st.last_ts is None else max(st.last_ts, ts_max)
                st.last_price = float(part["price"][-1])
                st.last_offset = last
                self.summary.parts += 1
            if self.beat is not None:  # every symbol of this flush is published: the watermark moves
                self.beat.flushed(max(cast(int, p["ts"].dt.epoch("ns").max()) for p in pending.values()))
        if self.bad:
            path = self.quarantine.write(pl.concat(self.bad))
            self.summary.quarantine_files.append(str(path))
            self.bad = []
        self.summary.flushes += 1


def run_ingest(
    data_dir: Path,
    source: Source,
    opts: IngestOptions,
    stop: Event,
    batches: Iterator[TickBatch] | None = None,
) -> IngestSummary:
    """Drain `source` into the ticks log until it ends, `stop` is set, or a bound is hit."""
    summary = IngestSummary(source=source.name, data_dir=str(data_dir))
    for _ in ingest_loop(data_dir, source, opts, stop, summary, batches):
        pass
    return summary


def ingest_loop(
    data_dir: Path,
    source: Source,
    opts: IngestOptions,
    stop: Event,
    summary: IngestSummary,
    batches: Iterator[TickBatch] | None = None,
    logs: LogStore | None = None,
) -> Iterator[int]:
    """The stage: drain `source` into the ticks log until it ends, `stop` is set, or a bound
    is hit, keeping `summary` up to date and yielding each batch's progress (units of
    `source.total`).

    Everything accepted is flushed before it ends, also when `stop` ends the run (Ctrl-C,
    SIGTERM). `batches` replaces `source.batches(stop)`, e.g. with a paced version of it.
    """
    store = store_for(data_dir, logs)
    log = store.open(TICKS)
    deadline = time.monotonic() + opts.duration if opts.duration else None
    beat = Heartbeat(data_dir, *_written_offsets(log, data_dir, store), logs=store, feed=lambda: feed_state(source))
    with log.writer() as writer, beat:
        pipe = _Pipeline(writer, Quarantine(data_dir, TICKS), opts, summary, beat)
        stream = batches if batches is not None else source.batches(stop)
        try:
            for batch in stream:
                for piece in _split(pipe.judge_time(batch), opts.flush_every):
                    pipe.accept(piece)
                    if pipe.due():
                        pipe.flush()
                summary.elapsed = time.monotonic() - summary.started
                yield batch.progress
                if opts.max_ticks is not None and summary.written + pipe.buffered >= opts.max_ticks:
                    summary.stopped_by = "--max-ticks"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    summary.stopped_by = "--duration"
                    break
                if stop.is_set():
                    summary.stopped_by = "signal"
                    break
            else:
                if stop.is_set():
                    summary.stopped_by = "signal"
        finally:
            pipe.flush()
            summary.elapsed = time.monotonic() - summary.started
            if hasattr(stream, "close"):
                stream.close()


def _written_offsets(log: Any, data_dir: Path, store: LogStore) -> tuple[dict[str, int], int | None]:
    """Each symbol's newest offset in the ticks log, checked against what the last ingest wrote,
    and the last ingest's watermark.

    A partition that ends before the last beat's offset lost its last part(s): appending
    would hand their offsets to new ticks, which a feature builder that read the old ones
    would skip. That is an error, not a fresh start.
    """
    offsets = {s: log.last_offset(s) for s in log.partitions()}
    previous = read_beat(data_dir, store)
    for sym, expected in (previous.offsets if previous else {}).items():
        if offsets.get(sym, -1) < expected:
            raise LogError(missing_tail(TICKS, sym, offsets.get(sym, -1), expected, data_dir))
    return offsets, previous.watermark if previous else None


def _split(batch: TickBatch, rows: int) -> Iterator[TickBatch]:
    """Slices of at most `rows` rows, so that parts honour --flush-every whatever the source's batch size."""
    if batch.frame.height <= rows:
        yield batch
        return
    for start in range(0, batch.frame.height, rows):
        last = start + rows >= batch.frame.height
        yield TickBatch(
            batch.frame.slice(start, rows),
            batch.raw,
            batch.where,
            batch.progress if last else 0,
            batch.gaps if last else [],
        )


def synthetic_resume(
    data_dir: Path, symbols: list[str], logs: LogStore | None = None
) -> tuple[int | None, dict[str, tuple[float, int]]]:
    """Where a synthetic run continues an existing log: (first free second, per-symbol price and next id).

    Repeated runs extend the simulated market instead of regenerating the same ticks (which
    would all be duplicates): time goes on from the newest tick, each price from its last
    trade, trade ids from the partition's row count.
    """

    log = store_for(data_dir, logs).open(TICKS)
    log.sync()
    resume: dict[str, tuple[float, int]] = {}
    latest: int | None = None
    for sym in symbols:
        tail = log.tail(sym)
        if tail is None or tail.height == 0:
            continue
        ts_max = cast(int, tail["ts"].dt.epoch("ns").max())
        latest = ts_max if latest is None else max(latest, ts_max)
        resume[sym] = (float(tail["price"][-1]), log.last_offset(sym) + 1)
    start = None if latest is None else (latest // 1_000_000_000 + 1) * 1_000_000_000
    return start, resume


SYNTHETIC_EPOCH_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z


def open_source(
    kind: str,
    data_dir: Path,
    stop: Event,
    *,
    symbols: list[str] | None = None,
    speed: float | None = None,
    seed: int = 42,
    start_ns: int | None = None,
    regime_minutes: float = 720.0,
    regime: str | None = None,
    max_ticks: int | None = None,
    path: str | None = None,
    fmt: str = "auto",
    symbol: str | None = None,
    url: str | None = None,
    on_event: Callable[[str], None] | None = None,
    logs: LogStore | None = None,
) -> tuple[Source, Iterator[TickBatch]]:
    """Build the named source and its batch stream (paced when `speed` is a factor)."""
    from rtml_cli.sources import LIVE, live_source, pace

    src: Source
    if kind == "synthetic":
        from rtml_cli.sources.synthetic import DEFAULT_SYMBOLS, SyntheticSource

        names = symbols or DEFAULT_SYMBOLS
        resume_start, resume = synthetic_resume(data_dir, names, logs)
        if start_ns is None:
            # Continue the market where the log ends; a new market starts now when paced
            # (so it looks live) and at a fixed time when generating history (reproducible).
            fresh = time.time_ns() // 1_000_000_000 * 1_000_000_000 if speed else SYNTHETIC_EPOCH_NS
            start_ns = resume_start if resume_start is not None else fresh
        src = SyntheticSource(names, seed, start_ns, max_ticks, resume, regime_minutes, regime)
    elif kind == "replay":
        from rtml_cli.sources.replay import ReplaySource

        if symbol is not None:
            check_symbol(symbol)
        src = ReplaySource(path or "", fmt, symbol, stop=stop)
    elif kind in LIVE:
        src = live_source(kind)(symbols, url=url, on_event=on_event)
    else:
        raise ValueError(f"unknown source {kind!r}")
    batches = src.batches(stop)
    if speed is not None and kind not in LIVE:
        batches = pace(batches, speed, stop)
    return src, batches
