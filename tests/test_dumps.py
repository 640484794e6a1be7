"""Every Binance dump layout (spot, USD-M and COIN-M futures; trades and aggTrades; with and
without header; plain, .gz and .zip) read exactly, and every file in the wrong layout stopped
with an error that names the layout it is in, for every pair of layouts.

Hand-written files in the exchanges' own layouts, the real `rtml ingest` (CliRunner), the log
read back.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from rtml_cli.errors import InputFormatError
from rtml_cli.ingest import read_quarantine
from rtml_cli.log import ParquetLog
from rtml_cli.sources.layouts import LAYOUTS
from rtml_cli.sources.replay import ReplaySource
from tests.conftest import assert_clean_error

NOW_NS = 1_800_000_000_000_000_000


@dataclass(frozen=True)
class Dump:
    """A hand-written dump: its layout, file name, header (if it has one), rows, and per row
    the tick it must become: (ts ns, price, qty, side, trade_id)."""

    fmt: str
    name: str
    header: str | None
    rows: tuple[str, ...]
    ticks: tuple[tuple[int, float, float, str | None, str], ...]
    symbol: str

    def text(self, header: bool = True) -> str:
        lines = ([self.header] if header and self.header else []) + list(self.rows)
        return "\n".join(lines) + "\n"


MS_2024 = 1_704_067_200_000  # 2024-01-01T00:00:00Z in ms
US_2025 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z in µs

DUMPS = {
    "spot-trades": Dump(
        "binance",
        "BTCUSDT-trades-2025-01-01.csv",
        "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch",
        (
            f"4400000001,93000.01,0.00010000,9.300001,{US_2025 + 1},True,True",
            f"4400000002,93000.02,1.25000000,116250.025,{US_2025 + 999_999},False,True",
        ),
        (
            (1_735_689_600_000_001_000, 93000.01, 0.0001, "sell", "4400000001"),
            (1_735_689_600_999_999_000, 93000.02, 1.25, "buy", "4400000002"),
        ),
        "BTCUSDT",
    ),
    "usdm-trades": Dump(
        "binance-futures",
        "BTCUSDT-trades-2024-01.csv",
        "id,price,qty,quote_qty,time,is_buyer_maker",
        (
            f"4300000001,42000.10,0.005,210.0005,{MS_2024},true",
            f"4300000002,42000.20,1.250,52500.25,{MS_2024 + 1},false",
            f"4300000003,41999.90,0.001,41.9999,{MS_2024 + 999},true",
        ),
        (
            (1_704_067_200_000_000_000, 42000.10, 0.005, "sell", "4300000001"),
            (1_704_067_200_001_000_000, 42000.20, 1.25, "buy", "4300000002"),
            (1_704_067_200_999_000_000, 41999.90, 0.001, "sell", "4300000003"),
        ),
        "BTCUSDT",
    ),
    # COIN-M: qty is in contracts (100 USD each for BTC); base_qty (BTC) is not read
    "coinm-trades": Dump(
        "binance-futures",
        "BTCUSD_PERP-trades-2024-01-01.csv",
        "id,price,qty,base_qty,time,is_buyer_maker",
        (f"812345,42000.1,10,0.02380946,{MS_2024 + 5},false", f"812346,42000.0,3,0.00714285,{MS_2024 + 6},true"),
        (
            (1_704_067_200_005_000_000, 42000.1, 10.0, "buy", "812345"),
            (1_704_067_200_006_000_000, 42000.0, 3.0, "sell", "812346"),
        ),
        "BTCUSD_PERP",
    ),
    "spot-agg": Dump(
        "binance-agg",
        "ETHUSDT-aggTrades-2025-01-01.zip",
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match",
        (
            f"3000000001,3300.50,0.5000,4400000001,4400000003,{US_2025 + 7},true,true",
            f"3000000002,3300.51,2.0000,4400000004,4400000004,{US_2025 + 8},false,true",
        ),
        (
            (1_735_689_600_000_007_000, 3300.50, 0.5, "sell", "3000000001"),
            (1_735_689_600_000_008_000, 3300.51, 2.0, "buy", "3000000002"),
        ),
        "ETHUSDT",
    ),
    "futures-agg": Dump(
        "binance-futures-agg",
        "BTCUSDT-aggTrades-2024-01-01.csv",
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
        (
            f"2013000001,42000.1,0.010,4300000001,4300000002,{MS_2024 + 10},false",
            f"2013000002,42000.0,0.250,4300000003,4300000009,{MS_2024 + 11},true",
            f"2013000003,42000.2,1.000,4300000010,4300000010,{MS_2024 + 11},false",
        ),
        (
            (1_704_067_200_010_000_000, 42000.1, 0.01, "buy", "2013000001"),
            (1_704_067_200_011_000_000, 42000.0, 0.25, "sell", "2013000002"),
            (1_704_067_200_011_000_000, 42000.2, 1.0, "buy", "2013000003"),
        ),
        "BTCUSDT",
    ),
}


def write(path: Path, text: str) -> Path:
    """`text` as the file `path` names: .gz and .zip compressed (the zip holds the .csv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(path.name.removesuffix(".zip") + ".csv", data)
    else:
        path.write_bytes(data)
    return path


def ingest(rtml, path: Path, *extra: str) -> dict:
    r = rtml("ingest", "--source", "replay", "--path", str(path), "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def as_ticks(df: pl.DataFrame) -> list[tuple]:
    return list(
        zip(
            df["ts"].dt.epoch("ns").to_list(),
            df["price"].to_list(),
            df["qty"].to_list(),
            df["side"].to_list(),
            df["trade_id"].to_list(),
            strict=True,
        )
    )


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
@pytest.mark.parametrize(("suffix", "fmt"), [(".csv", "auto"), (".csv.gz", "named"), (".zip", "auto")])
@pytest.mark.parametrize("kind", list(DUMPS))
def test_every_binance_layout_is_read_exactly(rtml, data_dir, tmp_path, kind, header, suffix, fmt):
    dump = DUMPS[kind]
    stem = dump.name.split(".")[0]
    path = write(tmp_path / (stem + suffix), dump.text(header))
    s = ingest(rtml, path, *(["--format", dump.fmt] if fmt == "named" else []))
    assert s["written"] == len(dump.rows) and s["quarantined"] == {}
    assert list(s["symbols"]) == [dump.symbol]
    df = ParquetLog(data_dir, "ticks").read_all()
    assert as_ticks(df) == list(dump.ticks)
    assert df["symbol"].to_list() == [dump.symbol] * len(dump.rows)


def test_aggtrades_parquet_with_binance_column_names(rtml, data_dir, tmp_path):
    f = tmp_path / "BTCUSDT-aggTrades-2024-01-01.parquet"
    pl.DataFrame(
        {
            "agg_trade_id": [2013000001, 2013000002],
            "price": [42000.1, 42000.0],
            "quantity": [0.01, 0.25],
            "first_trade_id": [4300000001, 4300000003],
            "last_trade_id": [4300000002, 4300000009],
            "transact_time": [MS_2024 + 10, MS_2024 + 11],
            "is_buyer_maker": [False, True],
        }
    ).write_parquet(f)
    assert ReplaySource(str(f), now_ns=NOW_NS)._plans[0].fmt == "binance-futures-agg"  # no is_best_match
    s = ingest(rtml, f)
    assert s["written"] == 2 and list(s["symbols"]) == ["BTCUSDT"]
    assert as_ticks(ParquetLog(data_dir, "ticks").read_all()) == list(DUMPS["futures-agg"].ticks[:2])
    # the same layout as its CSV dumps: one glob takes both
    write(tmp_path / "BTCUSDT-aggTrades-2024-01-02.csv", DUMPS["futures-agg"].text().replace("2013000", "2014000"))
    assert ingest(rtml, tmp_path / "BTCUSDT-aggTrades-*")["written"] == 3
    # two columns that name one field are an error, not a guess
    pl.DataFrame(
        {
            "agg_trade_id": [1],
            "price": [1.0],
            "quantity": [1.0],
            "qty": [1.0],
            "transact_time": [MS_2024],
            "is_buyer_maker": [True],
        }
    ).write_parquet(tmp_path / "two" / "X-aggTrades-1.parquet", mkdir=True)
    r = rtml("ingest", "--source", "replay", "--path", str(tmp_path / "two" / "X-aggTrades-1.parquet"))
    assert_clean_error(r, "the columns qty, quantity name the same field; keep one of them")


@pytest.mark.parametrize("fmt", ["auto", "binance-futures"])
def test_an_odd_first_record_is_quarantined_not_taken_for_the_layout(rtml, data_dir, tmp_path, fmt):
    """One short (or long) first row among good ones: the file is still in its layout."""
    rows = [f"{4300000000 + i},42000,0.5,21000,{MS_2024 + i},false" for i in range(1, 21)]
    for symbol, first in (("BTCUSDT", "4300000000,42000,0.5,21000"), ("ETHUSDT", "4300000000,1,1,1,1,false,true")):
        f = write(tmp_path / f"{symbol}-trades-2024-01.csv", "\n".join([first, *rows]) + "\n")
        s = ingest(rtml, f, "--format", fmt)
        assert s["written"] == 20 and s["quarantined"] == {"missing_ts" if symbol == "BTCUSDT" else "extra_fields": 1}


def test_the_reported_case_futures_aggtrades_under_format_binance_stops_naming_its_layout(rtml, data_dir, tmp_path):
    """It used to exit 0 having quarantined every row as bad_side."""
    dump = DUMPS["futures-agg"]
    rows = [
        f"{2013000000 + i},42000.{i % 10},0.0{i % 9 + 1},{4300000000 + 2 * i},{4300000001 + 2 * i},{MS_2024 + i}"
        f",{'true' if i % 2 else 'false'}"
        for i in range(300)
    ]
    for header in (True, False):
        f = write(tmp_path / str(header) / dump.name, "\n".join(([dump.header] if header else []) + rows) + "\n")
        r = rtml("ingest", "--source", "replay", "--path", str(f), "--format", "binance")
        assert_clean_error(
            r,
            "it looks like a Binance USD-M or COIN-M futures aggTrades dump",
            "pass --format binance-futures-agg, or --format auto",
        )
    assert ParquetLog(data_dir, "ticks").partitions() == []
    assert not (data_dir / "quarantine").exists()


# -- every pair of layouts ------------------------------------------------------------------------

# A file in each layout rtml reads (the Binance ones with and without header), named so that
# the layout's own reading would find its symbol.
KRAKEN = "1700000000.123456,37000.1,0.5\n1700000000.5,37000.2,0.25\n1700000001,37001,1.0\n"
TARDIS = (
    "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
    "binance,BTCUSDT,1700000000000001,1700000000000500,t1,buy,37000.5,0.1\n"
    "binance,BTCUSDT,1700000000200000,1700000000201000,t2,sell,37001,0.2\n"
)
RTML = (
    "ts,symbol,price,qty,side,trade_id\n"
    "2024-01-01T00:00:00Z,BTCUSDT,1.5,2,buy,a\n"
    "2024-01-01T00:00:01Z,BTCUSDT,1.6,1,sell,b\n"
)
FILES = {
    "kraken": ("kraken", "XBTUSD.csv", KRAKEN),
    "tardis": ("tardis", "trades.csv", TARDIS),
    "rtml": ("rtml", "export.csv", RTML),
    **{
        f"{kind}{'' if header else '-no-header'}": (d.fmt, d.name.split(".")[0] + ".csv", d.text(header))
        for kind, d in DUMPS.items()
        for header in (True, False)
    },
}
PAIRS = [(name, other) for name, (fmt, _, _) in FILES.items() for other in LAYOUTS if other != fmt]


@pytest.mark.parametrize(("name", "asked"), PAIRS)
def test_a_file_in_another_layout_than_asked_is_an_error_naming_its_layout(tmp_path, name, asked):
    fmt, filename, text = FILES[name]
    path = write(tmp_path / filename, text)
    with pytest.raises(InputFormatError) as err:
        ReplaySource(str(path), asked, now_ns=NOW_NS)
    message = str(err.value)
    assert f"it looks like {LAYOUTS[fmt].title} (" in message, message
    assert message.endswith(f"pass --format {fmt}, or --format auto"), message
    # and --format auto reads it
    assert ReplaySource(str(path), "auto", now_ns=NOW_NS)._plans[0].fmt == fmt


def test_a_short_file_all_of_whose_rows_fail_and_that_looks_like_another_layout_is_an_error(tmp_path):
    """Fewer rows than the mostly-fail rule looks at, but every one of them fails."""
    dump = DUMPS["futures-agg"]
    path = write(tmp_path / dump.name, dump.text(header=False))
    with pytest.raises(InputFormatError, match=r"3 of the first 3 rows .* pass --format binance-futures-agg"):
        ReplaySource(str(path), "binance", now_ns=NOW_NS)


def test_mixed_layouts_in_one_glob_are_an_error_naming_the_file(rtml, data_dir, tmp_path):
    write(tmp_path / "BTCUSDT-aggTrades-2024-01-01.csv", DUMPS["futures-agg"].text())
    write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", DUMPS["usdm-trades"].text())
    r = rtml("ingest", "--source", "replay", "--path", str(tmp_path / "BTCUSDT-*.csv"))
    assert_clean_error(
        r,
        "BTCUSDT-trades-2024-01-02.csv is a Binance USD-M or COIN-M futures trades dump (--format binance-futures), "
        "but BTCUSDT-aggTrades-2024-01-01.csv is a Binance USD-M or COIN-M futures aggTrades dump "
        "(--format binance-futures-agg); one --path takes files of one layout",
    )
    # named, the file of the other layout fails its own checks, and the error names it
    r = rtml("ingest", "--source", "replay", "--path", str(tmp_path / "BTCUSDT-*.csv"), "--format", "binance-futures")
    assert_clean_error(
        r, "BTCUSDT-aggTrades-2024-01-01.csv starts with the header of a Binance USD-M or COIN-M futures aggTrades dump"
    )
    assert ParquetLog(data_dir, "ticks").partitions() == []


def test_headers_with_and_without_in_one_glob_are_one_layout(rtml, data_dir, tmp_path):
    """Older futures dumps have no header, newer ones do: the same layout."""
    dump = DUMPS["usdm-trades"]
    write(tmp_path / "BTCUSDT-trades-2023-12.csv", "4299999999,41000,1,41000,1704067199000,false\n")
    write(tmp_path / "BTCUSDT-trades-2024-01.csv", dump.text(header=True))
    s = ingest(rtml, tmp_path / "BTCUSDT-trades-*.csv")
    assert s["written"] == 4 and s["quarantined"] == {}


# -- bad records --------------------------------------------------------------------------------


def test_every_bad_aggtrades_record_is_quarantined_with_its_reason(rtml, data_dir, tmp_path):
    header = DUMPS["futures-agg"].header
    assert header is not None
    t = MS_2024
    rows = [
        (f"1,100.0,1.0,11,12,{t},false", None),
        (f"2,abc,1.0,13,13,{t + 1},false", "unparseable_price"),
        (f"3,100.0,-1,14,14,{t + 2},false", "non_positive_qty"),
        (f"4,100.0,1.0,15,15,{t + 3},maybe", "bad_side"),
        (f"5,100.0,1.0,16,16,{t + 4}", "bad_side"),  # short: no is_buyer_maker
        ("6,100.0,1.0", "missing_ts"),  # short
        (f"7,100.0,1.0,17,17,{t + 6},false,true", "extra_fields"),  # a spot row among futures ones
        (f"1,100.0,1.0,18,18,{t + 7},false", "duplicate_trade_id"),
        ("8,100.0,1.0,19,19,4102444800000,false", "future_ts"),  # 2100
        ("9,100.0,1.0,20,20,20000000000000,false", "unparseable_ts"),  # ms past 2262
        ("10,100.0,1.0,21,21,-5,false", "unparseable_ts"),
        (f",100.0,1.0,22,22,{t + 11},false", "missing_trade_id"),
        (header, "repeated_header"),  # two dumps joined with cat
        (f"11,100.5,2.0,23,24,{t + 12},true", None),
    ]
    rows += [(f"{100 + i},99.5,1.0,{200 + i},{200 + i},{t + 100 + i},false", None) for i in range(20)]
    name = "BTCUSDT-aggTrades-2024-01-01.csv"
    f = write(tmp_path / name, "\n".join([header] + [r for r, _ in rows]) + "\n")
    s = ingest(rtml, f)
    bad = [(f"{name}:{i + 2}", why) for i, (_, why) in enumerate(rows) if why]
    assert s["written"] == 2 + 20 and s["quarantined_total"] == len(bad)
    q = read_quarantine(data_dir)
    line = pl.col("where").str.extract(r":(\d+)$").cast(pl.Int64)
    assert [tuple(r) for r in q.sort(line).select("where", "reason").rows()] == bad
    head = ParquetLog(data_dir, "ticks").read_all().head(2)
    assert head["trade_id"].to_list() == ["1", "11"] and head["side"].to_list() == ["buy", "sell"]
