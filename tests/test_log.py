"""The Parquet log: offsets, atomic parts, hive partitions, locking, orphans, compaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import duckdb
import polars as pl
import pytest

from rtml_cli import atomic
from rtml_cli.errors import LockedError, LogError, SymbolError
from rtml_cli.log import OFFSET, ParquetLog, check_symbol, part_name, partition_dirname

ODD_SYMBOLS = ["BTC/USD", "A B", "100%", "x=y", "ÉTH/€", "a,b", "..x", "ETH-USD.P"]


def frame(n: int, start: int = 0, symbol: str = "BTC/USD") -> pl.DataFrame:
    return pl.DataFrame({"symbol": [symbol] * n, "v": list(range(start, start + n))})


def test_append_assigns_strictly_increasing_offsets_and_names_parts_by_them(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        assert w.append("BTC/USD", frame(3)) == (0, 2)
        assert w.append("BTC/USD", frame(2, 3)) == (3, 4)
        assert w.append("ETH/USD", frame(1)) == (0, 0)
    names = sorted(os.listdir(log.partition_path("BTC/USD")))
    d = log.partition_path("BTC/USD")  # offsets, then the CRC-32 of the file's bytes
    assert names == [
        part_name(0, 2, zlib.crc32((d / names[0]).read_bytes())),
        part_name(3, 4, zlib.crc32((d / names[1]).read_bytes())),
    ]
    assert log.last_offset("BTC/USD") == 4
    assert log.last_offset("ETH/USD") == 0
    assert log.last_offset("SOL/USD") == -1
    assert log.partitions() == ["BTC/USD", "ETH/USD"]
    got = log.read_after("BTC/USD", -1)
    assert got[OFFSET].to_list() == [0, 1, 2, 3, 4]
    assert got["v"].to_list() == [0, 1, 2, 3, 4]
    assert got.columns[0] == OFFSET


def test_read_after_returns_only_the_tail_and_skips_old_parts(tmp_path, monkeypatch):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        for i in range(5):
            w.append("S", frame(10, 10 * i, "S"))
    assert log.read_after("S", 37)[OFFSET].to_list() == [38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]
    assert log.read_after("S", 49).height == 0
    # the tail is found from the listing: only parts past the offset are opened
    assert [p.name[:41] for p in log.files_after("S", 37)] == [part_name(30, 39)[:41], part_name(40, 49)[:41]]


def test_a_new_writer_continues_the_offsets(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        w.append("S", frame(4, 0, "S"))
    with log.writer() as w:
        assert w.append("S", frame(2, 4, "S")) == (4, 5)


def test_writer_refuses_empty_batches_and_a_batch_with_offsets(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        with pytest.raises(LogError, match="empty"):
            w.append("S", frame(0))
        with pytest.raises(LogError, match="assigns offsets"):
            w.append("S", frame(2).with_columns(offset=pl.lit(7)))


@pytest.mark.parametrize("symbol", ODD_SYMBOLS)
def test_partitions_are_percent_encoded_and_read_back_as_the_true_symbol(tmp_path, symbol):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        w.append(symbol, frame(3, 0, symbol))
    d = log.partition_path(symbol)
    assert d.parent == log.root and "/" not in d.name and d.name.startswith("symbol=")
    assert log.partitions() == [symbol]
    glob = str(log.root / "**" / "*.parquet")
    by_polars = pl.read_parquet(glob, hive_partitioning=True)
    assert by_polars["symbol"].unique().to_list() == [symbol]
    con = duckdb.connect()
    rows = con.execute(f"select distinct symbol from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    assert rows == [(symbol,)]


def test_partition_names_match_what_polars_own_partitioned_writer_produces(tmp_path):
    df = pl.DataFrame({"symbol": ["BTC/USD", "A B", "x=y"], "v": [1, 2, 3]})
    df.write_parquet(tmp_path / "out", partition_by="symbol")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(partition_dirname(s) for s in df["symbol"])


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        (" BTC", "spaces"),
        ("BTC\n", "spaces"),
        ("BT\x00C", "control"),
        ("A\x1bB", "control"),
        (".", "not a usable"),
        ("..", "not a usable"),
        ("X" * 65, "longer"),
    ],
)
def test_unusable_symbol_names_are_rejected_with_the_reason(bad, why):
    with pytest.raises(SymbolError, match=why):
        check_symbol(bad)


def test_path_like_symbols_cannot_escape_the_log_directory(tmp_path):
    log = ParquetLog(tmp_path / "data", "ticks")
    with log.writer() as w:
        w.append("../../etc", frame(1, 0, "../../etc"))
    written = list((tmp_path).rglob("*.parquet"))
    assert len(written) == 1
    assert written[0].parent.parent == log.root
    assert log.partitions() == ["../../etc"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer(), pytest.raises(LockedError, match=f"pid {os.getpid()}"), ParquetLog(tmp_path, "ticks").writer():
        pass
    with log.writer():  # released on exit
        pass


def test_a_writer_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, time
        from rtml_cli.log import ParquetLog
        with ParquetLog({str(tmp_path)!r}, "ticks").writer():
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError), ParquetLog(tmp_path, "ticks").writer():
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with ParquetLog(tmp_path, "ticks").writer() as w:  # the kernel dropped the dead pid's lock
            assert w.append("S", frame(1, 0, "S")) == (0, 0)
    finally:
        proc.kill()


def test_orphaned_temp_files_are_removed_by_the_next_writer_and_never_read(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        w.append("S", frame(2, 0, "S"))
    d = log.partition_path("S")
    orphan = atomic.temp_path_for(d / part_name(2, 3))
    orphan.write_bytes(b"PAR1 half a part")  # what a crash mid-write leaves behind
    assert log.read_after("S", -1).height == 2  # readers ignore it
    assert log.last_offset("S") == 1
    with log.writer() as w:
        assert not orphan.exists()
        assert w.append("S", frame(1, 2, "S")) == (2, 2)


def test_compaction_merges_small_parts_and_keeps_every_offset(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        for i in range(10):
            w.append("S", frame(5, 5 * i, "S"))
        w.append("S", frame(100, 50, "S"))  # a big part stays as it is
        w.append("S", frame(3, 150, "S"))
        before = log.read_after("S", -1)
        result = w.compact("S", target_rows=20)
    after = log.read_after("S", -1)
    assert after.equals(before)
    assert [(p.first, p.last) for p in log.parts("S")] == [(0, 19), (20, 39), (40, 49), (50, 149), (150, 152)]
    assert (result.parts_before, result.parts_after) == (12, 5)
    assert log.read_after("S", 42)[OFFSET].to_list()[:3] == [43, 44, 45]
    with log.writer() as w:  # appends continue after compaction
        assert w.append("S", frame(1, 153, "S")) == (153, 153)


def test_a_crash_between_publishing_the_merged_part_and_deleting_the_originals(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        for i in range(3):
            w.append("S", frame(4, 4 * i, "S"))
    d = log.partition_path("S")
    merged = log.read_after("S", -1)
    merged.write_parquet(d / part_name(0, 11))  # published, originals still there
    assert len(os.listdir(d)) == 4
    got = log.read_after("S", -1)
    assert got[OFFSET].to_list() == list(range(12))  # every row once
    with log.writer():
        pass  # the next writer removes the covered originals
    assert sorted(os.listdir(d)) == [part_name(0, 11)]


def test_partially_overlapping_parts_are_reported_not_guessed(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    with log.writer() as w:
        w.append("S", frame(4, 0, "S"))
    frame(4, 0, "S").with_columns(offset=pl.int_range(2, 6)).write_parquet(log.partition_path("S") / part_name(2, 5))
    with pytest.raises(LogError, match="overlap"):
        log.read_after("S", -1)


@pytest.mark.slow
def test_a_reader_running_while_a_writer_appends_and_compacts_never_sees_a_partial_part(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    stop = threading.Event()
    errors: list[str] = []
    seen_sizes: dict[int, list[int]] = {0: [], 1: []}

    def read_loop(k: int):
        reader = ParquetLog(tmp_path, "ticks")
        while not stop.is_set():
            try:
                got = reader.read_after("S", -1)
            except Exception as exc:
                errors.append(repr(exc))
                return
            if got.height:
                offs = got[OFFSET].to_list()
                if offs != list(range(len(offs))):
                    errors.append(f"offsets not contiguous: {offs[:5]}... ({len(offs)})")
                    return
                if got["v"].to_list() != offs:
                    errors.append("row content does not match its offset")
                    return
                seen_sizes[k].append(len(offs))

    readers = [threading.Thread(target=read_loop, args=(k,)) for k in range(2)]
    for t in readers:
        t.start()
    n = 0
    with log.writer() as w:
        for i in range(60):
            size = 500 + 37 * i
            w.append("S", frame(size, n, "S"))
            n += size
            if i % 10 == 9:
                w.compact("S", target_rows=5000)
    time.sleep(0.05)
    stop.set()
    for t in readers:
        t.join(10)
    assert errors == []
    for sizes in seen_sizes.values():
        assert sizes, "the reader never saw data while the writer ran"
        assert sizes == sorted(sizes)  # a reader never sees the log shrink (or rows vanish)
        assert max(sizes) <= n
    assert log.read_after("S", -1).height == n


def test_follow_yields_new_rows_until_stopped(tmp_path):
    log = ParquetLog(tmp_path, "ticks")
    stop = threading.Event()
    with log.writer() as w:
        w.append("S", frame(3, 0, "S"))
        got = []
        it = log.follow("S", -1, stop, poll=0.01)
        got.append(next(it))
        w.append("S", frame(2, 3, "S"))
        got.append(next(it))
        stop.set()
        assert list(it) == []
    assert [f[OFFSET].to_list() for f in got] == [[0, 1, 2], [3, 4]]


def test_a_flipped_bit_is_caught_by_the_part_checksum_before_a_rebuild_or_compact_uses_it(tmp_path):
    """A bit flipped inside a part used to be read as good data, and compact rewrote it into
    a new part; the part's name carries the CRC-32 of its bytes, which those readers check."""
    from rtml_cli.features import FeatureBuilder, FeatureSpec

    log = ParquetLog(tmp_path, "ticks")
    ticks = pl.DataFrame(
        {
            "ts": [1_767_225_600_000_000_000 + i * 1_000_000_000 for i in range(600)],
            "recv_ts": [1_767_225_600_000_000_000 + i * 1_000_000_000 for i in range(600)],
            "symbol": ["S"] * 600,
            "price": [100.0 + (i % 9) for i in range(600)],
            "qty": [1.0] * 600,
            "side": ["buy"] * 600,
            "trade_id": [str(i) for i in range(600)],
        }
    ).with_columns(pl.col("ts", "recv_ts").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"))
    with log.writer() as w:
        for k in range(3):
            w.append("S", ticks.slice(200 * k, 200))
    part = log.parts("S")[1]
    data = bytearray(part.path.read_bytes())
    data[len(data) // 3] ^= 0x01
    part.path.write_bytes(bytes(data))
    with pytest.raises(LogError, match="do not match the checksum"), FeatureBuilder(tmp_path, FeatureSpec()) as b:
        b.build()
    with log.writer() as w, pytest.raises(LogError, match="do not match the checksum"):
        w.compact("S", target_rows=10_000)
    assert log.parts("S")[1].path == part.path  # nothing rewritten


def test_parts_that_differ_by_more_than_an_added_column_are_damage_not_read_around(tmp_path):
    """Parts without `in_sample` read with it as nulls; a part lacking any other column (or
    with another type) is an error, and compact does not merge it into a trusted part."""
    log = ParquetLog(tmp_path, "predictions")
    with log.writer() as w:
        w.append("X", pl.DataFrame({"prediction": [1.0, 2.0]}))
        w.append("X", pl.DataFrame({"prediction": [3.0], "in_sample": [True]}))
    assert log.read_after("X")["in_sample"].to_list() == [None, None, True]
    with log.writer() as w:
        w.append("X", pl.DataFrame({"in_sample": [False]}))  # no prediction: not an older layout
    with pytest.raises(LogError, match=r"damaged|failed"):
        log.read_after("X")
    before = sorted(p.path.name for p in log.parts("X"))
    with log.writer() as w, pytest.raises(LogError):
        w.compact("X")
    assert sorted(p.path.name for p in log.parts("X")) == before
