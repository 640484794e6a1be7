"""Replaying trade files: every format, compression, de-duplication, bad records, wrong files.

Real files in tmp_path, the real `rtml ingest --source replay` command (click's CliRunner),
and the resulting ticks log and quarantine read back with polars and DuckDB.
"""

from __future__ import annotations

import gzip
import json
import time
import zipfile
from datetime import UTC
from pathlib import Path
from threading import Event

import duckdb
import polars as pl
import pytest

from rtml_cli.ingest import IngestOptions, read_quarantine, run_ingest
from rtml_cli.log import ParquetLog
from rtml_cli.sources import replay as replay_module
from rtml_cli.sources.replay import ReplaySource
from tests.conftest import assert_clean_error

NOW_NS = 1_800_000_000_000_000_000  # 2027-01-15: a fixed receive time for direct ReplaySource runs
QUARANTINE_COLUMNS = ["quarantined_at", "source", "reason", "where", "symbol", "raw"]

KRAKEN = """1700000000.123456,37000.1,0.5
1700000000.5,37000.2,0.25
1700000001,37001,1.0
1700000001,37001,1.0
1700000002.000000001,37002.5,0.125
"""

BINANCE_HEADER = "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch"
BINANCE_ROWS = [
    # id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch
    "1001,42000.10,0.01000000,420.001,1704067200000,true,true",  # 2024-01-01, milliseconds
    "1002,42000.20,0.02000000,840.004,1704067200123,false,true",
    "1003,93000.00,0.50000000,46500,1735689600000001,True,True",  # 2025-01-01, microseconds
]

TARDIS = """exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance,BTCUSDT,1700000000000001,1700000000000500,t1,buy,37000.5,0.1
binance,ETHUSDT,1700000000100000,1700000000100900,e1,unknown,2000.25,1.5
binance,BTCUSDT,1700000000200000,1700000000201000,t2,sell,37001,0.2
"""


# -- helpers --------------------------------------------------------------------------------


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def replay(rtml, path: Path | str, *extra: str, into: Path | None = None) -> dict:
    """`rtml ingest --source replay --json`, into the test's data dir or `into`."""
    target = ["--data-dir", str(into)] if into else []
    r = rtml("ingest", "--source", "replay", "--path", str(path), "--json", *extra, *target, data=into is None)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def replay_error(rtml, path: Path | str, *extra: str, fragments: tuple[str, ...] = ()) -> str:
    """The command fails cleanly: exit 1, output starting `Error: `, no traceback."""
    r = rtml("ingest", "--source", "replay", "--path", str(path), *extra)
    assert_clean_error(r, *fragments)
    assert r.output.startswith("Error: "), r.output
    return r.output


def ticks(data_dir: Path) -> pl.DataFrame:
    return ParquetLog(data_dir, "ticks").read_all()


def ns(frame: pl.DataFrame, col: str = "ts") -> list[int]:
    return frame[col].dt.epoch("ns").to_list()


def parsed(path: Path, chunk_bytes: int, **kw) -> pl.DataFrame:
    """What the source yields (before validation), concatenated over its batches."""
    src = ReplaySource(str(path), chunk_bytes=chunk_bytes, now_ns=NOW_NS, **kw)
    frames = [b.frame for b in src.batches(Event())]
    return pl.concat(frames, how="diagonal").select("_line", "ts", "price", "qty", "side", "trade_id", "_parse_problem")


def quarantined(data_dir: Path) -> list[tuple[str, str, str]]:
    """(where, reason, raw) of every quarantined record, in file order."""
    q = read_quarantine(data_dir)
    assert q.columns == QUARANTINE_COLUMNS
    line = pl.col("where").str.extract(r":(\d+)$").cast(pl.Int64)
    return [tuple(r) for r in q.sort(line).select("where", "reason", "raw").rows()]


# -- Kraken ---------------------------------------------------------------------------------


def test_kraken_csv_exact_nanoseconds_no_side_symbol_from_file_name(rtml, data_dir, tmp_path):
    before = time.time_ns()
    s = replay(rtml, write(tmp_path / "XBTUSD.csv", KRAKEN))
    after = time.time_ns()
    assert s["written"] == 5 and s["received"] == 5 and s["quarantined"] == {} and s["quarantined_total"] == 0
    assert list(s["symbols"]) == ["XBTUSD"] and s["stopped_by"] == "end of input"
    assert ParquetLog(data_dir, "ticks").partitions() == ["XBTUSD"]
    df = ticks(data_dir)
    assert df.columns == ["offset", "ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]
    assert df["offset"].to_list() == [0, 1, 2, 3, 4]
    assert df["symbol"].unique().to_list() == ["XBTUSD"]
    # fractional seconds as exact integers: no float round-off (1700000000.123456 as a
    # float64 is 1700000000.1234560013...)
    assert ns(df) == [
        1_700_000_000_123_456_000,
        1_700_000_000_500_000_000,
        1_700_000_001_000_000_000,
        1_700_000_001_000_000_000,
        1_700_000_002_000_000_001,
    ]
    assert df["price"].to_list() == [37000.1, 37000.2, 37001.0, 37001.0, 37002.5]
    assert df["qty"].to_list() == [0.5, 0.25, 1.0, 1.0, 0.125]
    assert df["side"].to_list() == [None] * 5
    # Kraken files have no receive time: it is the time of the replay
    assert all(before <= t <= after for t in ns(df, "recv_ts"))
    ids = df["trade_id"].to_list()
    assert ids == [
        "k1700000000.123456|37000.1|0.5|0",
        "k1700000000.5|37000.2|0.25|0",
        "k1700000001|37001|1.0|0",
        "k1700000001|37001|1.0|1",  # two identical trades are two trades
        "k1700000002.000000001|37002.5|0.125|0",
    ]
    assert not (data_dir / "quarantine").exists()


def test_kraken_log_read_back_with_duckdb(rtml, data_dir, tmp_path):
    replay(rtml, write(tmp_path / "XBTUSD.csv", KRAKEN))
    files = str(data_dir / "ticks" / "*" / "*.parquet")
    row = duckdb.sql(
        f"SELECT count(*), count(DISTINCT trade_id), min(epoch_ns(ts)), max(epoch_ns(ts)), sum(qty), "
        f"count(side), any_value(symbol) FROM read_parquet('{files}', hive_partitioning=false)"
    ).fetchall()
    assert row == [(5, 5, 1_700_000_000_123_456_000, 1_700_000_002_000_000_001, 2.875, 0, "XBTUSD")]


def test_kraken_symbol_option_and_a_file_name_that_names_no_pair(rtml, data_dir, tmp_path):
    f = write(tmp_path / "trades.csv", KRAKEN)
    replay_error(rtml, f, fragments=("trades.csv is a Kraken trades CSV", "pass --symbol"))
    assert ParquetLog(data_dir, "ticks").partitions() == []
    s = replay(rtml, f, "--symbol", "BTC/USD")
    assert list(s["symbols"]) == ["BTC/USD"] and s["written"] == 5
    assert ParquetLog(data_dir, "ticks").partitions() == ["BTC/USD"]


def test_kraken_symbol_option_overrides_the_file_name(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "XBTUSD.csv", KRAKEN), "--symbol", "BTC/USD")
    assert list(s["symbols"]) == ["BTC/USD"]
    assert ticks(data_dir)["symbol"].unique().to_list() == ["BTC/USD"]


def test_replaying_the_same_file_twice_adds_nothing(rtml, data_dir, tmp_path):
    f = write(tmp_path / "XBTUSD.csv", KRAKEN)
    replay(rtml, f)
    first = ticks(data_dir)
    again = replay(rtml, f)
    assert again["written"] == 0 and again["quarantined"] == {"duplicate_trade_id": 5}
    assert ticks(data_dir).equals(first)
    assert quarantined(data_dir) == [
        (f"XBTUSD.csv:{i + 1}", "duplicate_trade_id", line) for i, line in enumerate(KRAKEN.splitlines())
    ]


def test_an_overlapping_file_adds_only_the_new_trades(rtml, data_dir, tmp_path):
    # Kraken's quarterly updates overlap the full history: same content, other line numbers
    lines = KRAKEN.splitlines()
    replay(rtml, write(tmp_path / "full" / "XBTUSD.csv", "\n".join(lines[:4]) + "\n"))
    s = replay(rtml, write(tmp_path / "update" / "XBTUSD.csv", "\n".join(lines[2:]) + "\n"))
    assert s["written"] == 1 and s["quarantined"] == {"duplicate_trade_id": 2}
    assert ticks(data_dir)["trade_id"].to_list()[-1] == "k1700000002.000000001|37002.5|0.125|0"
    assert ticks(data_dir).height == 5


def test_gz_and_zip_give_the_same_log_as_plain_csv(rtml, tmp_path):
    plain = write(tmp_path / "XBTUSD.csv", KRAKEN)
    gz = write(tmp_path / "gz" / "XBTUSD.csv.gz", gzip.compress(KRAKEN.encode()))
    zp = tmp_path / "zip" / "XBTUSD.zip"
    zp.parent.mkdir()
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("XBTUSD.csv", KRAKEN)
    zdir = tmp_path / "zipdir" / "XBTUSD.zip"  # a folder entry beside the one file is fine
    zdir.parent.mkdir()
    with zipfile.ZipFile(zdir, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("XBTUSD/", "")
        z.writestr("XBTUSD/XBTUSD.csv", KRAKEN)
    frames = []
    for i, f in enumerate([plain, gz, zp, zdir]):
        d = tmp_path / f"d{i}"
        s = replay(rtml, f, into=d)
        assert s["written"] == 5 and list(s["symbols"]) == ["XBTUSD"]
        frames.append(ticks(d).drop("recv_ts"))  # recv_ts is the time of each replay
    assert frames[0].height == 5
    for other in frames[1:]:
        assert other.equals(frames[0])


def _chunk_file(tmp_path: Path) -> Path:
    # runs of identical trades, interleaved with others at the same time, a bad record in the
    # middle of a run, and a trade slightly out of time order
    lines = [f"17000000{i // 7:02d}.5,100.0,1.0" for i in range(35)]
    lines += ["1700000010,100,1", "1700000010,101,1", "1700000010,100,1", "1700000010,101,1", "1700000010,100,1"]
    lines += ["1700000011,100,1"] * 3 + [",100,1", "x,100,1"] + ["1700000011,100,1"] * 3
    lines += ["1700000012,100,1", "1700000013,100,1", "1700000012,100,1", "1700000099,101,2"]
    return write(tmp_path / "XBTUSD.csv", "\n".join(lines) + "\n")


CHUNK_FILE_IDS = (
    [f"k17000000{s:02d}.5|100.0|1.0|{n}" for s in range(5) for n in range(7)]
    + [f"k1700000010|{p}|1|{n}" for p, n in [(100, 0), (101, 0), (100, 1), (101, 1), (100, 2)]]
    + [f"k1700000011|100|1|{n}" for n in range(3)]
    + ["k|100|1|0", "kx|100|1|0"]
    + [f"k1700000011|100|1|{n}" for n in range(3, 6)]
    + ["k1700000012|100|1|0", "k1700000013|100|1|0", "k1700000012|100|1|1", "k1700000099|101|2|0"]
)


@pytest.mark.slow
def test_small_chunks_give_the_same_rows_and_ids_as_one_big_chunk(tmp_path):
    f = _chunk_file(tmp_path)
    whole = parsed(f, 1 << 20)
    assert whole["trade_id"].to_list() == CHUNK_FILE_IDS
    assert whole["_line"].to_list() == list(range(1, len(CHUNK_FILE_IDS) + 1))
    # chunk_bytes=1 cuts after every line (a chunk ends at its last line end); the others mix
    for chunk in [1, 23, 37, 64, 333]:
        assert parsed(f, chunk).equals(whole), chunk


@pytest.mark.slow
def test_small_chunks_write_the_same_log(tmp_path):
    f = _chunk_file(tmp_path)
    out = {}
    for chunk in (24, 1 << 20):
        d = tmp_path / f"c{chunk}"
        s = run_ingest(d, ReplaySource(str(f), chunk_bytes=chunk, now_ns=NOW_NS), IngestOptions(), Event())
        assert s.written == len(CHUNK_FILE_IDS) - 2
        assert dict(s.quarantined) == {"missing_ts": 1, "unparseable_ts": 1}  # no false duplicates
        out[chunk] = ticks(d)
    assert out[24].equals(out[1 << 20])
    assert out[24]["trade_id"].to_list() == [i for i in CHUNK_FILE_IDS if i not in ("k|100|1|0", "kx|100|1|0")]


@pytest.mark.slow
def test_the_cli_streams_in_chunks_with_the_same_result(rtml, tmp_path, monkeypatch):
    f = _chunk_file(tmp_path)
    big = tmp_path / "big"
    replay(rtml, f, into=big)
    monkeypatch.setattr(replay_module, "CHUNK_BYTES", 50)
    assert ReplaySource(str(f)).chunk_bytes == 50  # the command's source reads the patched size
    small = tmp_path / "small"
    s = replay(rtml, f, into=small)
    assert s["written"] == len(CHUNK_FILE_IDS) - 2
    assert ticks(small).drop("recv_ts").equals(ticks(big).drop("recv_ts"))


@pytest.mark.slow
def test_the_reader_works_in_byte_chunks(tmp_path):
    lines = [f"{1_700_000_000 + i}.25,100.5,0.125" for i in range(400)]  # 26 bytes a line
    f = write(tmp_path / "XBTUSD.csv", "\n".join(lines) + "\n")
    batches = list(ReplaySource(str(f), chunk_bytes=260, now_ns=NOW_NS).batches(Event()))
    assert len(batches) == 40
    assert {b.frame.height for b in batches} == {10}
    assert sum(b.progress for b in batches) == f.stat().st_size  # progress in bytes of the file


# -- Binance --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [True, False])
def test_binance_with_or_without_header_ms_and_us_times_and_taker_side(rtml, data_dir, tmp_path, header):
    text = "\n".join(([BINANCE_HEADER] if header else []) + BINANCE_ROWS) + "\n"
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", text))
    assert s["written"] == 3 and list(s["symbols"]) == ["BTCUSDT"] and s["quarantined"] == {}
    df = ticks(data_dir)
    # 1704067200000 ms and 1735689600000001 µs: 2024-01-01T00:00:00Z and 2025-01-01T00:00:00.000001Z
    assert ns(df) == [1_704_067_200_000_000_000, 1_704_067_200_123_000_000, 1_735_689_600_000_001_000]
    assert df["side"].to_list() == ["sell", "buy", "sell"]  # buyer is maker -> the taker sold
    assert df["trade_id"].to_list() == ["1001", "1002", "1003"]
    assert df["price"].to_list() == [42000.10, 42000.20, 93000.0]
    assert df["qty"].to_list() == [0.01, 0.02, 0.5]
    assert df["symbol"].to_list() == ["BTCUSDT"] * 3


def test_binance_explicit_format_with_header_and_crlf_line_ends(rtml, data_dir, tmp_path):
    text = "\r\n".join([BINANCE_HEADER, *BINANCE_ROWS]) + "\r\n"
    s = replay(rtml, write(tmp_path / "ETHUSDT-trades-2024-01-01.csv", text), "--format", "binance")
    assert s["written"] == 3 and list(s["symbols"]) == ["ETHUSDT"]
    df = ticks(data_dir)
    assert df["trade_id"].to_list() == ["1001", "1002", "1003"] and df["side"].to_list() == ["sell", "buy", "sell"]


def test_binance_file_with_a_header_and_no_trades_writes_nothing(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", BINANCE_HEADER + "\n"))
    assert s["written"] == 0 and s["quarantined"] == {}


def test_binance_blank_lines_before_the_header_are_not_records(rtml, data_dir, tmp_path):
    text = "\n\n" + BINANCE_HEADER + "\n" + BINANCE_ROWS[0] + "\n"
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", text))
    assert s["written"] == 1 and s["quarantined"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("header", [True, False])
def test_a_chunk_starting_with_a_short_row_keeps_the_fields_of_the_rows_after_it(tmp_path, header):
    rows = [
        "1,100,1,100,1704067200000,false,true",
        "2,100,1,100",  # short: quarantined, and must not cut the fields of the rows after it
        "3,100,1,100,1704067200002,false,true",
        "4,100,1,100,1704067200003,true,true",
        "5,100,1,100,1704067200004,false,true",
        "6,100,1,100,1704067200005,false,true,extra",  # a long row: which field is extra cannot be known
    ]
    f = write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(([BINANCE_HEADER] if header else []) + rows) + "\n")
    first = 2 if header else 1
    for chunk in [*range(1, 120, 7), *range(41, 52), 1 << 20]:  # 43..50 cut right after a short row
        p = parsed(f, chunk)
        assert p["_parse_problem"].to_list() == [None, "missing_ts", None, None, None, "extra_fields"], chunk
        assert p["_line"].to_list() == list(range(first, first + 6)), chunk
        assert ns(p)[2:] == [1_704_067_200_002_000_000 + i * 1_000_000 for i in range(4)], chunk
        assert p["side"].to_list()[2:] == ["buy", "sell", "buy", "buy"], chunk


def test_binance_parquet_dump(rtml, data_dir, tmp_path):
    f = tmp_path / "BTCUSDT-trades-2024-01-01.parquet"
    pl.DataFrame(
        {
            "id": [7, 8],
            "price": [42000.5, 42001.0],
            "qty": [0.5, 0.25],
            "quoteQty": [21000.25, 10500.25],
            "time": [1704067200000, 1704067200001],
            "isBuyerMaker": [True, False],
            "isBestMatch": [True, True],
        }
    ).write_parquet(f)
    s = replay(rtml, f)
    assert s["written"] == 2 and list(s["symbols"]) == ["BTCUSDT"]
    df = ticks(data_dir)
    assert df["trade_id"].to_list() == ["7", "8"] and df["side"].to_list() == ["sell", "buy"]
    assert ns(df) == [1_704_067_200_000_000_000, 1_704_067_200_001_000_000]
    assert df["price"].to_list() == [42000.5, 42001.0]


def test_a_glob_of_daily_dumps_is_read_in_name_order(rtml, data_dir, tmp_path):
    write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", "2001,1,1,1,1704153600000,false,true\n")
    write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "1001,1,1,1,1704067200000,false,true\n")
    s = replay(rtml, tmp_path / "BTCUSDT-trades-*.csv")
    assert s["written"] == 2
    assert ticks(data_dir)["trade_id"].to_list() == ["1001", "2001"]


def test_a_glob_across_the_millisecond_to_microsecond_switch(rtml, data_dir, tmp_path):
    # the last day of 2024 in milliseconds, the first of 2025 in microseconds, gzipped
    d1 = "\n".join(f"{100 + i},93000.{i},0.1,9300,{1735689599000 + 100 * i},false,true" for i in range(5))
    d2 = "\n".join(f"{200 + i},93100.{i},0.2,18620,{1735689600000000 + 100_000 * i},true,true" for i in range(5))
    write(tmp_path / "BTCUSDT-trades-2025-01-01.csv.gz", gzip.compress((BINANCE_HEADER + "\n" + d2 + "\n").encode()))
    write(tmp_path / "BTCUSDT-trades-2024-12-31.csv.gz", gzip.compress((d1 + "\n").encode()))
    s = replay(rtml, tmp_path / "BTCUSDT-trades-*.csv.gz")
    assert s["written"] == 10 and s["symbols"]["BTCUSDT"]["last_offset"] == 9
    df = ticks(data_dir)
    assert df["trade_id"].to_list() == [str(i) for i in [*range(100, 105), *range(200, 205)]]
    assert ns(df) == [1_735_689_599_000_000_000 + 100_000_000 * i for i in range(5)] + [
        1_735_689_600_000_000_000 + 100_000_000 * i for i in range(5)
    ]
    assert df["ts"].is_sorted()
    assert df["side"].to_list() == ["buy"] * 5 + ["sell"] * 5


# -- Tardis ---------------------------------------------------------------------------------


def test_tardis_symbols_partitions_unknown_side_and_local_timestamp(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "trades.csv", TARDIS))
    assert s["written"] == 3 and sorted(s["symbols"]) == ["BTCUSDT", "ETHUSDT"]
    log = ParquetLog(data_dir, "ticks")
    assert log.partitions() == ["BTCUSDT", "ETHUSDT"]
    eth = log.read_after("ETHUSDT", -1)
    assert eth["side"].to_list() == [None]
    assert ns(eth) == [1_700_000_000_100_000_000]
    assert ns(eth, "recv_ts") == [1_700_000_000_100_900_000]
    assert eth["trade_id"].to_list() == ["e1"] and eth["price"].to_list() == [2000.25]
    btc = log.read_after("BTCUSDT", -1)
    assert ns(btc) == [1_700_000_000_000_001_000, 1_700_000_000_200_000_000]
    assert ns(btc, "recv_ts") == [1_700_000_000_000_500_000, 1_700_000_000_201_000_000]
    assert btc["side"].to_list() == ["buy", "sell"]
    assert btc["trade_id"].to_list() == ["t1", "t2"] and btc["qty"].to_list() == [0.1, 0.2]


def test_symbols_option_keeps_only_the_named_symbols(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "trades.csv", TARDIS), "--symbols", "ETHUSDT")
    assert s["written"] == 1 and s["skipped_other_symbols"] == 2 and s["quarantined"] == {}
    assert ParquetLog(data_dir, "ticks").partitions() == ["ETHUSDT"]
    assert ticks(data_dir)["trade_id"].to_list() == ["e1"]


def test_tardis_without_trade_ids_and_with_an_upper_case_header(rtml, data_dir, tmp_path):
    text = """Exchange,Symbol,Timestamp,Local_Timestamp,Id,Side,Price,Amount
kraken,XBT/USD,1700000000000001,1700000000000500,,buy,37000.5,0.1
kraken,XBT/USD,1700000000000001,1700000000000600,,buy,37000.5,0.1
kraken,XBT/USD,1700000000000002,1700000000000700,,sell,37000.0,0.3
"""
    f = write(tmp_path / "kraken_trades_2023-11-14_XBT-USD.csv", text)
    s = replay(rtml, f)
    assert s["written"] == 3 and list(s["symbols"]) == ["XBT/USD"]
    df = ticks(data_dir)
    assert df["trade_id"].to_list() == [
        "t1700000000000001|37000.5|0.1|0",
        "t1700000000000001|37000.5|0.1|1",
        "t1700000000000002|37000.0|0.3|0",
    ]
    assert df["side"].to_list() == ["buy", "buy", "sell"]
    again = replay(rtml, f)
    assert again["written"] == 0 and again["quarantined"] == {"duplicate_trade_id": 3}


# -- rtml's own files -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_an_exported_ticks_log_reimports_unchanged(rtml, tmp_path, kind):
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    r = rtml("ingest", "--max-ticks", "5000", "--data-dir", str(src_dir), "--json", data=False)
    assert r.exit_code == 0, r.output
    exported = ticks(src_dir).drop("offset")
    assert exported.height == 5000 and exported["symbol"].n_unique() > 1
    path = tmp_path / f"export.{kind}"
    exported.write_parquet(path) if kind == "parquet" else exported.write_csv(path)
    s = replay(rtml, path, into=dst_dir)
    assert s["written"] == 5000 and s["quarantined_total"] == 0
    cols = ["ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]
    key = ["symbol", "trade_id"]
    back = ticks(dst_dir)
    assert back.schema == ticks(src_dir).schema
    assert back.select(cols).sort(key).equals(exported.select(cols).sort(key))
    assert ParquetLog(dst_dir, "ticks").partitions() == ParquetLog(src_dir, "ticks").partitions()
    # and into the log it came from: all of it is already there
    again = replay(rtml, path, into=src_dir)
    assert again["written"] == 0 and again["quarantined"] == {"duplicate_trade_id": 5000}


def test_an_export_without_trade_ids_gets_stable_derived_ids(rtml, data_dir, tmp_path, monkeypatch):
    text = """ts,symbol,price,qty,side
2024-01-01T00:00:00.000000001Z,BTC/USD,100.5,1,buy
2024-01-01T00:00:00.000000001Z,BTC/USD,100.5,1,buy
2024-01-01T00:00:01Z,BTC/USD,101,2,
"""
    f = write(tmp_path / "export.csv", text)
    monkeypatch.setattr(replay_module, "CHUNK_BYTES", 60)  # the identical pair is cut apart
    s = replay(rtml, f)
    assert s["written"] == 3
    df = ticks(data_dir)
    assert ns(df) == [1_704_067_200_000_000_001, 1_704_067_200_000_000_001, 1_704_067_201_000_000_000]
    assert df["side"].to_list() == ["buy", "buy", None]
    ids = df["trade_id"].to_list()
    assert len(set(ids)) == 3 and all(i.startswith("r") for i in ids)
    assert ids[0].endswith("|0") and ids[1].endswith("|1")
    again = replay(rtml, f)
    assert again["written"] == 0 and again["quarantined"] == {"duplicate_trade_id": 3}


def test_an_export_with_a_non_ascii_symbol_cut_by_the_sniffing_window(rtml, data_dir, tmp_path):
    # The format is sniffed from the first 64 KiB; a multi-byte character cut there is fine.
    header = "ts,symbol,price,qty,side,trade_id\n"
    euro = "€".encode()
    for pad in range(200):
        rows = [
            f"2024-01-01T00:00:{i // 1000:02d}.{i % 1000:03d}Z,BTC/€,100.5,1,buy,{'0' * pad}{i}" for i in range(2000)
        ]
        data = (header + "\n".join(rows) + "\n").encode()
        at = data.rfind(euro, 0, 65536 + len(euro) - 1)
        if at < 65536 < at + len(euro):
            break
    else:
        pytest.fail("no padding puts a € across the 64 KiB boundary")
    s = replay(rtml, write(tmp_path / "export.csv", data))
    assert s["written"] == 2000 and list(s["symbols"]) == ["BTC/€"]
    assert ParquetLog(data_dir, "ticks").partitions() == ["BTC/€"]


# -- bad records ----------------------------------------------------------------------------


def test_every_bad_binance_record_is_quarantined_with_its_reason_and_good_ones_around_it_are_written(
    rtml, data_dir, tmp_path
):
    rows = [
        ("1,100.0,1.0,100,1704067200000,false,true", None),
        ("2,nan,1.0,100,1704067200001,false,true", "non_finite_price"),
        ("3,inf,1.0,100,1704067200002,false,true", "non_finite_price"),
        ("4,-5,1.0,100,1704067200003,false,true", "non_positive_price"),
        ("5,100.0,0,100,1704067200004,false,true", "non_positive_qty"),
        ("6,100.0,-1,100,1704067200005,false,true", "non_positive_qty"),
        ("7,100.0,1.0,100,not-a-time,false,true", "unparseable_ts"),
        ("8,100.0,1.0,100,4102444800000,false,true", "future_ts"),  # 2100-01-01
        ("9,,1.0,100,1704067200008,false,true", "missing_price"),
        ("10,100.0,1.0,100", "missing_ts"),  # short row
        ("11,abc,1.0,100,1704067200010,false,true", "unparseable_price"),
        ("12,100.0,1.0,100,1704067200011,maybe,true", "bad_side"),
        ("1,100.0,1.0,100,1704067200012,false,true", "duplicate_trade_id"),  # within the file
        (",100.0,1.0,100,1704067200013,false,true", "missing_trade_id"),
        ("13,100.5,2.0,201,1704067200014,true,true", None),
        ("14,100.0,1.0,100,1704067200015,,true", "bad_side"),  # isBuyerMaker missing
        ("15,100.0,1.0,100,1704067200016", "bad_side"),  # short row without isBuyerMaker
        ("16,100.0,nan,100,1704067200017,false,true", "non_finite_qty"),
        ("17,100.0,1.0,100,20000000000000,false,true", "unparseable_ts"),  # ms past 2262: no wrap-around
        ("18,100.0,1.0,100,-1,false,true", "unparseable_ts"),
        ("19,100.0,x,100,1704067200020,false,true", "unparseable_qty"),
        ("20,100.0,,100,1704067200021,false,true", "missing_qty"),
        ("21,99.5,3.0,298.5,1704067200022,false,true", None),
    ]
    # and good trades after them: a file whose rows mostly fail is refused as the wrong file
    rows += [(f"{i},99.5,1.0,99.5,{1704067200000 + i},false,true", None) for i in range(100, 125)]
    name = "BTCUSDT-trades-2024-01-01.csv"
    f = write(tmp_path / name, "\n".join(r for r, _ in rows) + "\n")
    s = replay(rtml, f)
    bad = [(i + 1, r, why) for i, (r, why) in enumerate(rows) if why]
    assert s["written"] == 3 + 25 and s["received"] == len(rows)
    counts: dict[str, int] = {}
    for _, _, why in bad:
        counts[why] = counts.get(why, 0) + 1
    assert s["quarantined"] == dict(sorted(counts.items())) and s["quarantined_total"] == len(bad) == 20
    df = ticks(data_dir).head(3)
    assert df["trade_id"].to_list() == ["1", "13", "21"]
    assert df["price"].to_list() == [100.0, 100.5, 99.5] and df["side"].to_list() == ["buy", "sell", "buy"]
    # the raw record is the line's fields; a short row's missing ones show as empty
    padded = {
        "10,100.0,1.0,100": "10,100.0,1.0,100,,,",
        "15,100.0,1.0,100,1704067200016": "15,100.0,1.0,100,1704067200016,,",
    }
    assert quarantined(data_dir) == [(f"{name}:{n}", why, padded.get(r, r)) for n, r, why in bad]
    q = read_quarantine(data_dir)
    assert set(q["source"]) == {"replay"} and set(q["symbol"]) == {"BTCUSDT"}
    assert q["quarantined_at"].null_count() == 0
    assert all(p.suffix == ".parquet" for p in (data_dir / "quarantine").iterdir())
    # and against the log: the good rows again are duplicates now
    again = replay(rtml, f)
    assert again["written"] == 0 and again["quarantined"]["duplicate_trade_id"] == 4 + 25
    assert ticks(data_dir).height == 3 + 25


def test_every_bad_kraken_record_is_quarantined_and_good_ones_around_it_are_written(rtml, data_dir, tmp_path):
    rows = [
        ("1700000000.1,100.0,1.0", None),
        ("1700000000.2,nan,1.0", "non_finite_price"),
        ("1700000000.3,-inf,1.0", "non_finite_price"),
        ("1700000000.4,0,1.0", "non_positive_price"),
        ("1700000000.5,100.0,-2", "non_positive_qty"),
        ("1700000000.6,100.0,0", "non_positive_qty"),
        ("1700000000.7,100.0,inf", "non_finite_qty"),
        ("17OOOOOOOO.8,100.0,1.0", "unparseable_ts"),
        ("1700000000.9.1,100.0,1.0", "unparseable_ts"),
        ("4102444800,100.0,1.0", "future_ts"),  # 2100-01-01
        ("20146744073.709551616,100.0,1.0", "unparseable_ts"),  # past 2262: must not wrap into 2023
        ("1700000001.0,,1.0", "missing_price"),
        ("1700000001.1,100.0", "missing_qty"),  # short row
        ("1700000001.2,100.0,", "missing_qty"),  # empty value
        (",100.0,1.0", "missing_ts"),
        ("1700000001.3,100.5,0.5", None),
        ("1700000001.3,100.5,0.5", None),  # the same trade again is a second trade (no trade ids)
        ("1700000001.4,101,2", None),
    ]
    # and good trades after them: a file whose rows mostly fail is refused as the wrong file
    rows += [(f"1700000002.{i:02d},101,1", None) for i in range(20)]
    f = write(tmp_path / "XBTUSD.csv", "\n".join(r for r, _ in rows) + "\n")
    s = replay(rtml, f)
    bad = [(i + 1, r, why) for i, (r, why) in enumerate(rows) if why]
    assert s["written"] == 4 + 20 and s["quarantined_total"] == len(bad) == 14
    assert s["quarantined"] == {
        "future_ts": 1,
        "missing_price": 1,
        "missing_qty": 2,
        "missing_ts": 1,
        "non_finite_price": 2,
        "non_finite_qty": 1,
        "non_positive_price": 1,
        "non_positive_qty": 2,
        "unparseable_ts": 3,
    }
    df = ticks(data_dir).head(4)
    assert ns(df) == [
        1_700_000_000_100_000_000,
        1_700_000_001_300_000_000,
        1_700_000_001_300_000_000,
        1_700_000_001_400_000_000,
    ]
    assert df["qty"].to_list() == [1.0, 0.5, 0.5, 2.0]
    padded = {"1700000001.1,100.0": "1700000001.1,100.0,"}
    assert quarantined(data_dir) == [(f"XBTUSD.csv:{n}", why, padded.get(r, r)) for n, r, why in bad]


def test_every_bad_tardis_record_is_quarantined(rtml, data_dir, tmp_path):
    rows = [
        ("binance,BTCUSDT,1700000000000001,1700000000000500,t1,buy,37000.5,0.1", None),
        ("binance,BTCUSDT,1700000000000002,1700000000000600,t2,sideways,37000.5,0.1", "bad_side"),
        ("binance,BTCUSDT,4102444800000000,1700000000000700,t3,buy,37000.5,0.1", "future_ts"),
        ("binance,BTCUSDT,,1700000000000800,t4,buy,37000.5,0.1", "missing_ts"),
        ("binance,BTCUSDT,1700000000000005,1700000000000900,t5,sell,37000.5,abc", "unparseable_qty"),
        ("binance,BTCUSDT,1700000000000006,1700000000001000,t1,sell,37001,0.2", "duplicate_trade_id"),
        ("binance,BTCUSDT,1700000000000007,1700000000001100,t7,sell,37001,0.2", None),
    ]
    # and good trades after them: a file whose rows mostly fail is refused as the wrong file
    rows += [
        (f"binance,BTCUSDT,17000000000001{i:02d},17000000000011{i:02d},g{i},buy,37001,0.1", None) for i in range(9)
    ]
    f = write(tmp_path / "trades.csv", TARDIS.splitlines()[0] + "\n" + "\n".join(r for r, _ in rows) + "\n")
    s = replay(rtml, f)
    assert s["written"] == 2 + 9
    assert s["quarantined"] == {
        "bad_side": 1,
        "duplicate_trade_id": 1,
        "future_ts": 1,
        "missing_ts": 1,
        "unparseable_qty": 1,
    }
    assert ticks(data_dir)["trade_id"].to_list()[:2] == ["t1", "t7"]
    assert quarantined(data_dir) == [(f"trades.csv:{i + 2}", why, r) for i, (r, why) in enumerate(rows) if why]


def test_a_bad_byte_late_in_a_file_spoils_one_record_not_the_replay(rtml, data_dir, tmp_path):
    lines = "".join(f"{1_700_000_000 + i},100,1\n" for i in range(5000))  # > 64 KiB, so past the sniffing
    data = lines.encode() + b"1700009999,1\xff0,1\n1700010000,100,1\n"
    s = replay(rtml, write(tmp_path / "XBTUSD.csv", data))
    assert s["written"] == 5001 and s["quarantined"] == {"unparseable_price": 1}
    assert quarantined(data_dir) == [("XBTUSD.csv:5001", "unparseable_price", "1700009999,1\ufffd0,1")]


# -- --max-ticks, pacing --------------------------------------------------------------------


def test_max_ticks_stops_a_replay_after_exactly_n_written(rtml, data_dir, tmp_path):
    rows = [f"{i},100,1,100,{1704067200000 + i},false,true" for i in range(1, 101)]
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows)), "--max-ticks", "37")
    assert s["written"] == 37 and s["stopped_by"] == "--max-ticks"
    assert ticks(data_dir)["trade_id"].to_list() == [str(i) for i in range(1, 38)]


@pytest.mark.slow
def test_max_ticks_across_files_chunks_and_bad_records(rtml, data_dir, tmp_path, monkeypatch):
    day1 = [f"{i},100,1,100,{1704067200000 + i},false,true" for i in range(1, 31)]
    day1[4] = "5,nan,1,100,1704067200005,false,true"  # not written, not counted
    day2 = [f"{1000 + i},100,1,100,{1704153600000 + i},true,true" for i in range(1, 31)]
    write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(day1) + "\n")
    write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", "\n".join(day2) + "\n")
    monkeypatch.setattr(replay_module, "CHUNK_BYTES", 100)
    s = replay(rtml, tmp_path / "BTCUSDT-trades-*.csv", "--max-ticks", "45")
    assert s["written"] == 45 and s["stopped_by"] == "--max-ticks"
    ids = ticks(data_dir)["trade_id"].to_list()
    assert ids == [str(i) for i in range(1, 31) if i != 5] + [str(1000 + i) for i in range(1, 17)]


def test_a_paced_replay_writes_everything_in_order(rtml, data_dir, tmp_path):
    rows = [f"{i},100,1,100,{1704067200000 + 10 * i},false,true" for i in range(1, 51)]  # 0.5 s of trading
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows)), "--speed", "5")
    assert s["written"] == 50
    assert ticks(data_dir)["trade_id"].to_list() == [str(i) for i in range(1, 51)]


def test_the_human_summary(rtml, data_dir, tmp_path):
    r = rtml(
        "ingest", "--source", "replay", "--path", str(write(tmp_path / "XBTUSD.csv", KRAKEN + "1700000003,nan,1\n"))
    )
    assert r.exit_code == 0, r.output
    assert "XBTUSD" in r.output and "non_finite_price" in r.output and "quarantine" in r.output
    assert ticks(data_dir).height == 5


# -- wrong files ----------------------------------------------------------------------------


def _zip_of_two(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.csv", KRAKEN)
        z.writestr("b.csv", KRAKEN)
    return path


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("logo.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)), "binary file"),
        ("empty.csv", lambda p: p.write_text(""), "is empty"),
        ("blank.csv", lambda p: p.write_text("\n\n  \n"), "is empty"),
        ("people.csv", lambda p: p.write_text("name,age\nann,3\n"), "does not look like a trade file"),
        ("data.json", lambda p: p.write_text('{"trades": [1, 2]}\n'), "does not look like a trade file"),
        ("list.json", lambda p: p.write_text("[1,2,3]\n"), "does not look like a trade file"),
        ("table.parquet", lambda p: pl.DataFrame({"a": [1]}).write_parquet(p), "without trade columns"),
        ("broken.parquet", lambda p: p.write_bytes(b"PAR1" + b"x" * 100), "not a readable Parquet file"),
        ("two.zip", _zip_of_two, "holds 2 files"),
        ("XBTUSD.zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"junk" * 20), "damaged zip archive"),
        ("XBTUSD.csv.gz", lambda p: p.write_bytes(gzip.compress(KRAKEN.encode() * 50)[:60]), "truncated"),
        ("XBTUSD.csv", lambda p: p.write_bytes("1700000000,37000,0.5\n".encode("utf-16")), "binary file"),
        ("latin1.csv", lambda p: p.write_bytes("symbol,prix\nBTC,\xe9t\xe9\n".encode("latin-1")), "not UTF-8"),
        ("gzipped.csv.gz", lambda p: p.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n\x00\x00")), "binary file"),
    ],
)
def test_a_file_that_is_not_a_trade_file_is_a_clear_error(rtml, data_dir, tmp_path, name, make, fragment):
    path = tmp_path / name
    make(path)
    replay_error(rtml, path, fragments=(fragment,))
    assert ParquetLog(data_dir, "ticks").partitions() == []


@pytest.mark.parametrize(
    "path, fragment",
    [("nothing-*.csv", "no files match"), ("missing.csv", "does not exist"), (".", "is a directory")],
)
def test_paths_that_lead_nowhere_are_clear_errors(rtml, tmp_path, path, fragment):
    full = str(tmp_path / path) if path != "." else str(tmp_path)
    replay_error(rtml, full, fragments=(fragment,))


def test_an_explicit_format_that_does_not_fit_the_file_is_a_clear_error(rtml, tmp_path):
    f = write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(BINANCE_ROWS) + "\n")
    binance = "it looks like a Binance spot trades dump (id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch): "
    replay_error(rtml, f, "--format", "kraken", "--symbol", "X", fragments=("has 7 columns", "Kraken", binance))
    k = write(tmp_path / "XBTUSD.csv", KRAKEN)
    kraken = "it looks like a Kraken trades CSV (timestamp,price,volume): pass --format kraken, or --format auto"
    replay_error(rtml, k, "--format", "binance", fragments=("has 3 columns", "Binance", kraken))
    replay_error(rtml, k, "--format", "tardis", fragments=("does not start with the Tardis trades header", kraken))
    replay_error(rtml, k, "--format", "rtml", fragments=("lacks the column(s) ts, price, qty", kraken))
    garbage = write(tmp_path / "G" / "XBTUSD.csv", "\n".join(f"x{i},y,z" for i in range(50)) + "\n")
    replay_error(
        rtml,
        garbage,
        "--format",
        "kraken",
        fragments=("do not parse as a Kraken trades CSV (--format kraken)", "is this the right file"),
    )


def test_a_file_whose_rows_mostly_do_not_parse_is_a_clear_error(rtml, data_dir, tmp_path):
    # the first line looks like a Binance trade; the rest does not
    rows = [BINANCE_ROWS[0]] + [f"{i},price,qty,q,time,false,true" for i in range(30)]
    f = write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows) + "\n")
    replay_error(rtml, f, fragments=("30 of the first 31 rows", "do not parse as a Binance spot trades dump"))
    assert ParquetLog(data_dir, "ticks").partitions() == []


def test_a_wrong_file_in_a_glob_fails_before_anything_is_written(rtml, data_dir, tmp_path):
    write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(BINANCE_ROWS) + "\n")
    rows = [BINANCE_ROWS[0]] + [f"{i},price,qty,q,time,false,true" for i in range(30)]
    write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", "\n".join(rows) + "\n")
    replay_error(rtml, tmp_path / "BTCUSDT-trades-*.csv", fragments=("BTCUSDT-trades-2024-01-02.csv",))
    assert ParquetLog(data_dir, "ticks").partitions() == []
    assert not (data_dir / "quarantine").exists()


@pytest.mark.parametrize(
    "fmt, fragment",
    [
        ("kraken", "Kraken trades come as CSV"),
        ("binance", "lacks the column(s) id, price, qty, time, isBuyerMaker"),
        ("tardis", "lacks the column(s) timestamp, local_timestamp, id, side, price, amount"),
        ("rtml", "lacks the column(s) ts, price, qty"),
    ],
)
def test_an_explicit_format_on_a_parquet_file_without_its_columns(rtml, tmp_path, fmt, fragment):
    f = tmp_path / "table.parquet"
    pl.DataFrame({"a": [1], "b": ["x"]}).write_parquet(f)
    replay_error(rtml, f, "--format", fmt, "--symbol", "BTCUSDT", fragments=(fragment,))


def test_a_tardis_parquet_without_local_timestamps_is_a_clear_error(rtml, tmp_path):
    f = tmp_path / "trades.parquet"
    pl.DataFrame(
        {"symbol": ["BTCUSDT"], "timestamp": [1], "id": ["1"], "side": ["buy"], "price": [1.0], "amount": [1.0]}
    ).write_parquet(f)
    replay_error(rtml, f, fragments=("lacks the column(s) local_timestamp",))


def test_a_bad_symbol_option_is_a_clear_error(rtml, tmp_path):
    replay_error(rtml, write(tmp_path / "XBTUSD.csv", KRAKEN), "--symbol", " BTC", fragments=("spaces",))


# -- the quarantine ----------------------------------------------------------------------------


def test_two_runs_in_one_second_keep_both_quarantine_files(tmp_path, monkeypatch):
    from datetime import datetime

    from rtml_cli import ingest as ingest_module

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):  # both runs within the same second, deterministically
            return datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    monkeypatch.setattr(ingest_module, "datetime", FrozenClock)
    a = write(tmp_path / "a" / "XBTUSD.csv", "1700000000,100,1\n1700000000,nan,1\n")
    b = write(tmp_path / "b" / "XBTUSD.csv", "1700000001,100,1\n1700000001,100,-1\n")
    d = tmp_path / "data"
    for f in (a, b):
        s = run_ingest(d, ReplaySource(str(f), now_ns=NOW_NS), IngestOptions(), Event())
        assert s.written == 1 and sum(s.quarantined.values()) == 1
    assert sorted(read_quarantine(d)["reason"].to_list()) == ["non_finite_price", "non_positive_qty"]


def test_blank_lines_are_not_records(rtml, data_dir, tmp_path):
    f = write(tmp_path / "XBTUSD.csv", "1700000000,100,1\n\n1700000001,101,1\n\n\n")
    s = replay(rtml, f)
    assert s["written"] == 2 and s["quarantined_total"] == 0


def test_symbol_does_not_rename_a_file_that_has_a_symbol_column(rtml, tmp_path):
    f = write(tmp_path / "trades.csv", TARDIS)
    assert_clean_error(
        rtml("ingest", "--source", "replay", "--path", str(f), "--symbol", "X"), "has a symbol column", "--symbols"
    )


# -- plausible time ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trade_stamped_far_from_its_neighbours_is_quarantined_a_real_pause_is_not(rtml, data_dir, tmp_path):
    """A 2023 file with one row stamped in 2026 and one at 1970 (which made `rtml features`
    emit a million empty bars, or run for ten minutes into 7.7 GB); a pause of ten days with
    trades on both sides is a real pause."""
    t0 = 1_672_531_200  # 2023-01-01
    times = [t0 + 10 * i for i in range(200)] + [t0 + 10 * 86_400 + 10 * i for i in range(200)]
    rows = [f"{t:.1f},{100 + i % 7}.5,0.1" for i, t in enumerate(times)]
    rows.insert(100, "1767225600.0,101.5,0.1")  # 2026-01-01, amid 2023
    rows.insert(300, "0.5,101.5,0.1")  # 1970
    path = write(tmp_path / "XBTUSD.csv", "\n".join(rows) + "\n")
    for flush in ("101", "7"):  # the verdict does not depend on how the writes are cut
        other = replay(rtml, path, "--flush-every", flush, into=tmp_path / f"flush-{flush}")
        assert other["written"] == 400 and other["quarantined"] == {"implausible_ts": 2}
    s = replay(rtml, path)
    assert s["written"] == 400 and s["quarantined"] == {"implausible_ts": 2}
    got = [(w.rsplit(":", 1)[1], r) for w, r, _ in quarantined(data_dir)]
    assert got == [("101", "implausible_ts"), ("301", "implausible_ts")]  # the file's lines
    assert ns(ticks(data_dir)) == [t * 1_000_000_000 for t in times]
    r = rtml("features", "--json")  # the ten-day pause: seven days of empty bars, three left out
    assert r.exit_code == 0 and 3 * 1440 - 60 < json.loads(r.stdout)["gap_bars_skipped"] <= 3 * 1440


def test_a_line_longer_than_a_read_is_quarantined_in_bounded_memory(rtml, data_dir, tmp_path):
    """A 100 MB line used to take quadratic time (never finishing as a first line) and 1.6 GB;
    a line that runs on past MAX_LINE_BYTES beyond a read chunk is now read past and
    quarantined with its first bytes."""
    rows = [f"{1_672_531_200 + 10 * i:.1f},{100 + i % 7}.5,0.1" for i in range(400)]
    path = tmp_path / "XBTUSD.csv"
    with path.open("wb") as f:
        f.write(("\n".join(rows[:200]) + "\n").encode())
        f.write(b"1672533300.0," + b"9" * (10 << 20) + b",0.1\n")  # longer than a read (8 MB)
        f.write(("\n".join(rows[200:]) + "\n").encode())
    s = replay(rtml, path)
    assert s["written"] == 400 and s["quarantined"] == {"line_too_long": 1}
    [(where, _reason, raw)] = quarantined(data_dir)
    assert where == "XBTUSD.csv:201" and raw.startswith("RTML-LINE-TOO-LONG 1672533300.0 999") and len(raw) < 300
    # in chunks far smaller than the line, as the first-rows probe reads: the same records
    got = parsed(path, 64 * 1024)
    assert got.height == 401 and got["_parse_problem"].to_list().count("line_too_long") == 1


def test_a_stray_nul_byte_early_in_a_file_is_one_bad_record_not_a_binary_file(rtml, data_dir, tmp_path):
    rows = [f"{1_672_531_200 + 10 * i:.1f},{100 + i % 7}.5,0.1" for i in range(300)]
    rows[5] = "1672531250.0,10\x001.5,0.1"
    s = replay(rtml, write(tmp_path / "XBTUSD.csv", "\n".join(rows) + "\n"))
    assert s["written"] == 299 and s["quarantined"] == {"unparseable_price": 1}
    assert [w for w, _, _ in quarantined(data_dir)] == ["XBTUSD.csv:6"]


@pytest.mark.slow
def test_ctrl_c_while_many_files_are_checked_stops_before_anything_is_written(data_dir, tmp_path):
    """Every file is sniffed before the first is read; with thousands of files that takes a
    while, and Ctrl-C used to wait for all of them."""
    import signal
    import subprocess

    from tests.conftest import rtml_process

    files = tmp_path / "dumps"
    files.mkdir()
    rows = "\n".join(f"{1_672_531_200 + 10 * i:.1f},{100 + i % 7}.5,0.1" for i in range(50)) + "\n"
    for k in range(3_000):
        (files / f"XBTUSD-{k:05d}.csv").write_text(rows)
    p = rtml_process(
        [
            "ingest",
            "--source",
            "replay",
            "--path",
            str(files / "*.csv"),
            "--symbol",
            "BTC/USD",
            "--data-dir",
            str(data_dir),
        ],
        stderr=subprocess.PIPE,
    )
    time.sleep(4)  # the interpreter's start and imports, then the checking
    assert p.poll() is None, "the files were all checked before the signal: make more of them"
    p.send_signal(signal.SIGINT)
    p.wait(20)
    err = p.stderr.read()
    assert p.returncode == 1 and "stopped by a signal while checking the files" in err, err
    assert not ParquetLog(data_dir, "ticks").partitions()


def test_a_line_with_an_unbalanced_quote_is_a_clear_error(rtml, data_dir, tmp_path):
    rows = [f"{1_672_531_200 + 10 * i:.1f},{100 + i % 7}.5,0.1" for i in range(50)]
    rows[20] = '1672531400.0,"99.5,0.1'
    replay_error(
        rtml,
        write(tmp_path / "XBTUSD.csv", "\n".join(rows) + "\n"),
        fragments=("is not well-formed CSV", "unbalanced quote"),
    )


def test_a_long_multibyte_symbol_is_rejected_cleanly(rtml, data_dir, tmp_path):
    assert_clean_error(rtml("ingest", "--symbols", "€" * 30, "--max-ticks", "10"), "too long", code=2)
    f = tmp_path / "t.csv"
    f.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        f"x,{'€' * 30},1700000000000000,1700000000000000,1,buy,1,1\n"
        "x,OK,1700000000000000,1700000000000000,2,buy,1,1\n"
    )
    r = rtml("ingest", "--source", "replay", "--path", str(f), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quarantined"] == {"bad_symbol": 1}
    assert ParquetLog(data_dir, "ticks").partitions() == ["OK"]
