"""Replaying trade files: every format, compression, de-duplication, bad records, wrong files."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from threading import Event

import polars as pl
import pytest

from rtml_cli.ingest import IngestOptions, read_quarantine, run_ingest
from rtml_cli.log import ParquetLog
from rtml_cli.sources.replay import ReplaySource
from tests.conftest import assert_clean_error

KRAKEN = """1700000000.123456,37000.1,0.5
1700000000.5,37000.2,0.25
1700000001,37001,1.0
1700000001,37001,1.0
1700000002.000000001,37002.5,0.125
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def replay(rtml, path: Path | str, *extra: str, into: Path | None = None) -> dict:
    """`rtml ingest --source replay --json`, into the test's data dir or `into`."""
    target = ["--data-dir", str(into)] if into else []
    r = rtml("ingest", "--source", "replay", "--path", str(path), "--json", *extra, *target, data=into is None)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def ticks(data_dir: Path) -> pl.DataFrame:
    return ParquetLog(data_dir, "ticks").read_all()


# -- Kraken ---------------------------------------------------------------------------------


def test_kraken_csv_exact_nanoseconds_no_side_symbol_from_file_name(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "XBTUSD.csv", KRAKEN))
    assert s["written"] == 5 and s["quarantined_total"] == 0
    df = ticks(data_dir)
    assert df["symbol"].unique().to_list() == ["XBTUSD"]
    assert df["ts"].dt.epoch("ns").to_list() == [
        1_700_000_000_123_456_000, 1_700_000_000_500_000_000, 1_700_000_001_000_000_000,
        1_700_000_001_000_000_000, 1_700_000_002_000_000_001,
    ]
    assert df["price"].to_list() == [37000.1, 37000.2, 37001.0, 37001.0, 37002.5]
    assert df["qty"].to_list() == [0.5, 0.25, 1.0, 1.0, 0.125]
    assert df["side"].null_count() == 5
    ids = df["trade_id"].to_list()
    assert len(set(ids)) == 5  # two identical trades are two trades
    assert ids[2] == "k1700000001|37001|1.0|0" and ids[3] == "k1700000001|37001|1.0|1"


def test_kraken_symbol_option_and_a_file_name_that_names_no_pair(rtml, data_dir, tmp_path):
    f = write(tmp_path / "trades.csv", KRAKEN)
    assert_clean_error(rtml("ingest", "--source", "replay", "--path", str(f)), "pass --symbol")
    s = replay(rtml, f, "--symbol", "BTC/USD")
    assert list(s["symbols"]) == ["BTC/USD"]


def test_replaying_the_same_file_twice_adds_nothing(rtml, data_dir, tmp_path):
    f = write(tmp_path / "XBTUSD.csv", KRAKEN)
    replay(rtml, f)
    again = replay(rtml, f)
    assert again["written"] == 0 and again["quarantined"] == {"duplicate_trade_id": 5}
    assert ticks(data_dir).height == 5


def test_gz_and_zip_give_the_same_log_as_plain_csv(rtml, tmp_path):
    plain = write(tmp_path / "XBTUSD.csv", KRAKEN)
    gz = tmp_path / "gz" / "XBTUSD.csv.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(KRAKEN.encode()))
    zp = tmp_path / "zip" / "XBTUSD.zip"
    zp.parent.mkdir()
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("XBTUSD.csv", KRAKEN)
    frames = []
    for i, f in enumerate([plain, gz, zp]):
        d = tmp_path / f"d{i}"
        replay(rtml, f, into=d)
        frames.append(ticks(d).drop("recv_ts"))
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])


def test_small_chunks_give_the_same_rows_and_ids_as_one_big_chunk(tmp_path):
    # a run of identical trades spans chunk boundaries: ids must still count 0, 1, 2, ...
    lines = [f"17000000{i // 7:02d}.5,100.0,1.0" for i in range(70)] + ["1700000099,101,2"]
    f = write(tmp_path / "XBTUSD.csv", "\n".join(lines) + "\n")
    out = {}
    for chunk in (64, 1 << 20):
        d = tmp_path / f"c{chunk}"
        src = ReplaySource(str(f), chunk_bytes=chunk, now_ns=1_800_000_000_000_000_000)
        s = run_ingest(d, src, IngestOptions(), Event())
        assert s.written == 71
        out[chunk] = ticks(d)
    assert out[64].equals(out[1 << 20])
    assert out[64]["trade_id"][:8].to_list() == [f"k1700000000.5|100.0|1.0|{i}" for i in range(7)] + [
        "k1700000001.5|100.0|1.0|0"
    ]


# -- Binance --------------------------------------------------------------------------------

BINANCE_ROWS = [
    # id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch
    "1001,42000.10,0.01000000,420.001,1704067200000,true,true",  # 2024-01-01, milliseconds
    "1002,42000.20,0.02000000,840.004,1704067200123,false,true",
    "1003,93000.00,0.50000000,46500,1735689600000001,True,True",  # 2025-01-01, microseconds
]
HEADER = "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch"


@pytest.mark.parametrize("header", [True, False])
def test_binance_with_or_without_header_ms_and_us_times_and_taker_side(rtml, data_dir, tmp_path, header):
    text = "\n".join(([HEADER] if header else []) + BINANCE_ROWS) + "\n"
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", text))
    assert s["written"] == 3 and list(s["symbols"]) == ["BTCUSDT"]
    df = ticks(data_dir)
    assert df["ts"].dt.epoch("ns").to_list() == [
        1_704_067_200_000_000_000, 1_704_067_200_123_000_000, 1_735_689_600_000_001_000
    ]
    assert df["side"].to_list() == ["sell", "buy", "sell"]  # buyer is maker -> the taker sold
    assert df["trade_id"].to_list() == ["1001", "1002", "1003"]
    assert df["price"].to_list() == [42000.10, 42000.20, 93000.0]


def test_a_glob_of_daily_dumps_is_read_in_name_order(rtml, data_dir, tmp_path):
    write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", "2001,1,1,1,1704153600000,false,true\n")
    write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "1001,1,1,1,1704067200000,false,true\n")
    s = replay(rtml, tmp_path / "BTCUSDT-trades-*.csv")
    assert s["written"] == 2
    assert ticks(data_dir)["trade_id"].to_list() == ["1001", "2001"]


# -- Tardis ---------------------------------------------------------------------------------

TARDIS = """exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance,BTCUSDT,1700000000000001,1700000000000500,t1,buy,37000.5,0.1
binance,ETHUSDT,1700000000100000,1700000000100900,e1,unknown,2000.25,1.5
binance,BTCUSDT,1700000000200000,1700000000201000,t2,sell,37001,0.2
"""


def test_tardis_symbols_partitions_unknown_side_and_local_timestamp(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "trades.csv", TARDIS))
    assert s["written"] == 3 and sorted(s["symbols"]) == ["BTCUSDT", "ETHUSDT"]
    log = ParquetLog(data_dir, "ticks")
    eth = log.read_after("ETHUSDT", -1)
    assert eth["side"].to_list() == [None]
    assert eth["recv_ts"].dt.epoch("ns").to_list() == [1_700_000_000_100_900_000]
    btc = log.read_after("BTCUSDT", -1)
    assert btc["ts"].dt.epoch("ns").to_list() == [1_700_000_000_000_001_000, 1_700_000_000_200_000_000]
    assert btc["side"].to_list() == ["buy", "sell"]


def test_symbols_option_keeps_only_the_named_symbols(rtml, data_dir, tmp_path):
    s = replay(rtml, write(tmp_path / "trades.csv", TARDIS), "--symbols", "ETHUSDT")
    assert s["written"] == 1 and s["skipped_other_symbols"] == 2
    assert ParquetLog(data_dir, "ticks").partitions() == ["ETHUSDT"]


# -- rtml's own files -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_an_exported_ticks_log_reimports_unchanged(rtml, tmp_path, kind):
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    assert rtml("ingest", "--max-ticks", "5000", "--data-dir", str(src_dir), data=False).exit_code == 0
    exported = ticks(src_dir).drop("offset")
    path = tmp_path / f"export.{kind}"
    exported.write_parquet(path) if kind == "parquet" else exported.write_csv(path)
    s = replay(rtml, path, into=dst_dir)
    assert s["written"] == 5000 and s["quarantined_total"] == 0
    cols = ["ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]
    key = ["symbol", "trade_id"]
    assert ticks(dst_dir).select(cols).sort(key).equals(exported.select(cols).sort(key))


# -- bad records ----------------------------------------------------------------------------


def test_every_bad_record_is_quarantined_with_its_reason_and_good_ones_around_it_are_written(rtml, data_dir, tmp_path):
    rows = [
        "1,100.0,1.0,100,1704067200000,false,true",   # good
        "2,nan,1.0,100,1704067200001,false,true",     # non_finite_price
        "3,inf,1.0,100,1704067200002,false,true",     # non_finite_price
        "4,-5,1.0,100,1704067200003,false,true",      # non_positive_price
        "5,100.0,0,100,1704067200004,false,true",     # non_positive_qty
        "6,100.0,-1,100,1704067200005,false,true",    # non_positive_qty
        "7,100.0,1.0,100,not-a-time,false,true",      # unparseable_ts
        "8,100.0,1.0,100,4102444800000,false,true",   # future_ts (2100-01-01)
        "9,,1.0,100,1704067200008,false,true",        # missing_price
        "10,100.0,1.0,100",                           # missing_ts (short row)
        "11,abc,1.0,100,1704067200010,false,true",    # unparseable_price
        "12,100.0,1.0,100,1704067200011,maybe,true",  # bad_side
        "1,100.0,1.0,100,1704067200012,false,true",   # duplicate_trade_id (within the file)
        ",100.0,1.0,100,1704067200013,false,true",    # missing_trade_id
        "13,100.5,2.0,201,1704067200014,true,true",   # good
    ]
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows) + "\n"))
    assert s["written"] == 2
    assert s["quarantined"] == {
        "bad_side": 1, "duplicate_trade_id": 1, "future_ts": 1, "missing_price": 1, "missing_trade_id": 1,
        "missing_ts": 1, "non_finite_price": 2, "non_positive_price": 1, "non_positive_qty": 2,
        "unparseable_price": 1, "unparseable_ts": 1,
    }
    assert ticks(data_dir)["trade_id"].to_list() == ["1", "13"]
    q = read_quarantine(data_dir)
    assert q.height == 13
    assert set(q["source"]) == {"replay"}
    by_reason = dict(zip(q["where"], q["reason"]))
    assert by_reason["BTCUSDT-trades-2024-01-01.csv:8"] == "future_ts"
    row = q.filter(pl.col("reason") == "bad_side")
    assert row["raw"][0] == "12,100.0,1.0,100,1704067200011,maybe,true"
    # and against the log: the good rows again are duplicates now
    again = replay(rtml, tmp_path / "BTCUSDT-trades-2024-01-01.csv")
    assert again["written"] == 0 and again["quarantined"]["duplicate_trade_id"] == 3


def test_max_ticks_stops_a_replay_after_exactly_n_written(rtml, data_dir, tmp_path):
    rows = [f"{i},100,1,100,{1704067200000 + i},false,true" for i in range(1, 101)]
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows)), "--max-ticks", "37")
    assert s["written"] == 37 and s["stopped_by"] == "--max-ticks"
    assert ticks(data_dir)["trade_id"].to_list() == [str(i) for i in range(1, 38)]


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
        ("people.csv", lambda p: p.write_text("name,age\nann,3\n"), "does not look like a trade file"),
        ("data.json", lambda p: p.write_text('{"trades": [1, 2]}\n'), "does not look like a trade file"),
        ("table.parquet", lambda p: pl.DataFrame({"a": [1]}).write_parquet(p), "without trade columns"),
        ("two.zip", _zip_of_two, "holds 2 files"),
    ],
)
def test_a_file_that_is_not_a_trade_file_is_a_clear_error(rtml, data_dir, tmp_path, name, make, fragment):
    path = tmp_path / name
    make(path)
    assert_clean_error(rtml("ingest", "--source", "replay", "--path", str(path)), fragment)
    assert ParquetLog(data_dir, "ticks").partitions() == []


@pytest.mark.parametrize(
    "path, fragment",
    [("nothing-*.csv", "no files match"), ("missing.csv", "does not exist"), (".", "is a directory")],
)
def test_paths_that_lead_nowhere_are_clear_errors(rtml, tmp_path, path, fragment):
    full = str(tmp_path / path) if path != "." else str(tmp_path)
    assert_clean_error(rtml("ingest", "--source", "replay", "--path", full), fragment)


def test_an_explicit_format_that_does_not_fit_the_file_is_a_clear_error(rtml, tmp_path):
    f = write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(BINANCE_ROWS) + "\n")
    assert_clean_error(
        rtml("ingest", "--source", "replay", "--path", str(f), "--format", "kraken", "--symbol", "X"),
        "has 7 columns", "Kraken",
    )
    garbage = write(tmp_path / "XBTUSD.csv", "\n".join(f"x{i},y,z" for i in range(50)) + "\n")
    assert_clean_error(
        rtml("ingest", "--source", "replay", "--path", str(garbage), "--format", "kraken"),
        "do not parse as kraken trades",
    )


def test_a_paced_replay_writes_everything_in_order(rtml, data_dir, tmp_path):
    rows = [f"{i},100,1,100,{1704067200000 + 10 * i},false,true" for i in range(1, 51)]  # 0.5 s of trading
    s = replay(rtml, write(tmp_path / "BTCUSDT-trades-2024-01-01.csv", "\n".join(rows)), "--speed", "5")
    assert s["written"] == 50
    assert ticks(data_dir)["trade_id"].to_list() == [str(i) for i in range(1, 51)]
