"""Bad input, property-based: generated trade files in every replay layout, with malformed
values in every field, rows cut short or too long, the header again in the middle, and
garbage in the fields rtml does not read. Whatever is generated, `rtml ingest --source
replay` either writes every good row exactly and quarantines every bad one with a reason, or
(a file mostly bad) stops with a clear error having written nothing. Never a traceback,
never a lost good row.

`RTML_PROPERTY_EXAMPLES=2000 pytest tests/test_properties.py` explores further (the default
run is derandomized, so CI sees the same cases every time)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtml_cli.cli import cli
from rtml_cli.ingest import read_quarantine
from rtml_cli.log import ParquetLog

EXAMPLES = int(os.environ.get("RTML_PROPERTY_EXAMPLES", "20"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="RTML_PROPERTY_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,  # a failure prints the @reproduce_failure line that replays it
)

T0_S = 1_704_067_200  # 2024-01-01T00:00:00Z


@dataclass(frozen=True)
class Layout:
    """A replay layout: its columns (name, kind), header, file name and --format."""

    fmt: str
    columns: tuple[tuple[str, str], ...]
    header: bool
    filename: str
    short_from: int  # a row cut to fewer fields than this is bad (the fields after it are not read)

    def good(self, i: int, price: str, qty: str, side: str, micros: int) -> dict[str, str]:
        """The i-th good row's fields: trade i at T0 + i s + `micros` µs."""
        us = (T0_S + i) * 1_000_000 + micros
        values = {
            "ts_s": f"{T0_S + i}.{micros:06d}",
            "ts_ms": str(us // 1000),
            "ts_us": str(us),
            "ts_iso": f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.{micros:06d}Z",
            "price": price,
            "qty": qty,
            "maker": "true" if side == "sell" else "false",
            "side": side,
            "id": str(1000 + i) if self.fmt.startswith("binance") else f"id{i}",  # Binance's ids are numbers
            "symbol": "BTCUSDT",
            "unread": f"{i}.5",
            "local_us": str(us + 500),
        }
        return {name: values[kind] for name, kind in self.columns}

    def expected_ns(self, i: int, micros: int) -> int:
        ns = ((T0_S + i) * 1_000_000 + micros) * 1000
        return ns - ns % 1_000_000 if any(k == "ts_ms" for _, k in self.columns) else ns  # ms times keep ms


BINANCE = Layout(
    "binance",
    (
        ("id", "id"),
        ("price", "price"),
        ("qty", "qty"),
        ("quoteQty", "unread"),
        ("time", "ts_ms"),
        ("isBuyerMaker", "maker"),
        ("isBestMatch", "unread"),
    ),
    False,
    "BTCUSDT-trades-2024-01-01.csv",
    6,
)
BINANCE_FUTURES = Layout(
    "binance-futures",
    (
        ("id", "id"),
        ("price", "price"),
        ("qty", "qty"),
        ("quote_qty", "unread"),
        ("time", "ts_ms"),
        ("is_buyer_maker", "maker"),
    ),
    False,
    "BTCUSDT-trades-2024-01.csv",
    6,
)
AGG = (
    ("agg_trade_id", "id"),
    ("price", "price"),
    ("quantity", "qty"),
    ("first_trade_id", "unread"),
    ("last_trade_id", "unread"),
    ("transact_time", "ts_ms"),
    ("is_buyer_maker", "maker"),
)
BINANCE_FUTURES_AGG = Layout("binance-futures-agg", AGG, False, "BTCUSDT-aggTrades-2024-01-01.csv", 7)
LAYOUTS = {
    "kraken": Layout("kraken", (("timestamp", "ts_s"), ("price", "price"), ("volume", "qty")), False, "XBTUSD.csv", 3),
    "binance": BINANCE,
    "binance-header": replace(BINANCE, header=True),
    "binance-futures": BINANCE_FUTURES,
    "binance-futures-header": replace(BINANCE_FUTURES, header=True),
    "binance-coin-m-header": replace(
        BINANCE_FUTURES,
        columns=tuple(("base_qty", k) if n == "quote_qty" else (n, k) for n, k in BINANCE_FUTURES.columns),
        header=True,
        filename="BTCUSD_PERP-trades-2024-01-01.csv",
    ),
    # spot aggTrades since 2025: microseconds
    "binance-agg": Layout(
        "binance-agg",
        (*AGG[:5], ("transact_time", "ts_us"), AGG[6], ("is_best_match", "unread")),
        False,
        "BTCUSDT-aggTrades-2025-01-01.csv",
        7,
    ),
    "binance-agg-header": Layout(
        "binance-agg",
        (*AGG[:5], ("transact_time", "ts_ms"), AGG[6], ("is_best_match", "unread")),
        True,
        "BTCUSDT-aggTrades-2024-01-01.csv",
        7,
    ),
    "binance-futures-agg": BINANCE_FUTURES_AGG,
    "binance-futures-agg-header": replace(BINANCE_FUTURES_AGG, header=True),
    "tardis": Layout(
        "tardis",
        (
            ("exchange", "unread"),
            ("symbol", "symbol"),
            ("timestamp", "ts_us"),
            ("local_timestamp", "local_us"),
            ("id", "id"),
            ("side", "side"),
            ("price", "price"),
            ("amount", "qty"),
        ),
        True,
        "trades.csv",
        8,
    ),
    "rtml": Layout(
        "rtml",
        (
            ("trade_id", "id"),
            ("ts", "ts_iso"),
            ("symbol", "symbol"),
            ("price", "price"),
            ("qty", "qty"),
            ("side", "side"),
        ),
        True,
        "export.csv",
        5,
    ),
}

# -- values ----------------------------------------------------------------------------------

# text that no parser reads as a number (a letter or a symbol outside a number's characters);
# no comma, quote or line break: those change a row's shape, generated on purpose below
NOT_A_NUMBER = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters=',"\r\n\x00'),
    min_size=1,
    max_size=12,
).filter(lambda t: re.search(r"[^0-9.eE+\- \t]", t) is not None)

BAD_NUMBER = st.one_of(
    st.just(""),
    NOT_A_NUMBER,
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1.2.3", "--1", "1e", "."]),
    st.decimals(max_value=0, allow_nan=False, allow_infinity=False, places=4).map(str),  # zero or negative
)
BAD_TIME = {  # per time kind: values that are no time, or one too far from now to be a trade's
    "ts_s": st.one_of(
        st.just(""),
        NOT_A_NUMBER,
        st.sampled_from(["4102444800", "99999999999.5", "-1", "1.2.3", "20146744073.709551616"]),
    ),
    "ts_ms": st.one_of(
        st.just(""),
        NOT_A_NUMBER,
        st.sampled_from(["4102444800000", "-1", "1704067200000.5", "20000000000000", "99999999999999999999"]),
    ),
    "ts_us": st.one_of(
        st.just(""), NOT_A_NUMBER, st.sampled_from(["4102444800000000", "-1", "1704067200000000.5", "1e15"])
    ),
    "ts_iso": st.one_of(
        st.just(""),
        NOT_A_NUMBER,
        st.sampled_from(["2100-01-01T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T25:00:00", "1700000000"]),
    ),
}
BAD_MAKER = NOT_A_NUMBER.filter(lambda t: t.strip().lower() not in ("true", "false")) | st.sampled_from(["", "1", "0"])
BAD_SIDE = NOT_A_NUMBER.filter(lambda t: t.strip().lower() not in ("buy", "sell", "unknown"))


def bad_values(layout: Layout) -> dict[str, st.SearchStrategy[str]]:
    """The columns a bad value can be put in, and what to put there."""
    out = {}
    for name, kind in layout.columns:
        if kind in BAD_TIME:
            out[name] = BAD_TIME[kind]
        elif kind in ("price", "qty"):
            out[name] = BAD_NUMBER
        elif kind == "maker":
            out[name] = BAD_MAKER
        elif kind == "side":
            out[name] = BAD_SIDE
        elif kind == "symbol" or (kind == "id" and layout.fmt.startswith("binance")):  # a Tardis row may lack an id
            out[name] = st.just("")
    return out


# -- files -----------------------------------------------------------------------------------


@dataclass
class Row:
    line: str
    good: bool
    i: int = -1  # a good row's trade number
    price: str = ""
    qty: str = ""
    side: str = ""
    micros: int = 0
    reason: str | None = None  # a bad row's reason, where it is known for sure


@st.composite
def trade_files(draw, layout: Layout, bad_share: float = 0.4):
    """(rows, text): good rows with bad ones among them, fewer bad than `bad_share` of all."""
    n_good = draw(st.integers(6, 30))
    n_bad = draw(st.integers(0, int(n_good * bad_share / (1 - bad_share))))
    rows: list[Row] = []
    for i in range(n_good):
        # plain decimals, as exchanges write them
        price = format(draw(st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("99999"), places=4)), "f")
        qty = format(draw(st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8)), "f")
        side = draw(st.sampled_from(["buy", "sell"]))
        micros = draw(st.integers(0, 999_999))
        fields = layout.good(i, price, qty, side, micros)
        unread = [n for n, k in layout.columns if k == "unread"]
        if unread and draw(st.booleans()):  # garbage where rtml does not read: still a good row
            fields[draw(st.sampled_from(unread))] = draw(NOT_A_NUMBER)
        trailing = "," if draw(st.integers(0, 5)) == 0 else ""  # an empty field past the layout is none
        rows.append(Row(",".join(fields.values()) + trailing, True, i, price, qty, side, micros))
    targets = bad_values(layout)
    for j in range(n_bad):
        fields = layout.good(n_good + j, "100", "1", "buy", 0)  # a bad row's other fields are fine
        how = draw(st.sampled_from(["value", "value", "value", "short", "extra", "duplicate", "header"]))
        reason = None
        if how == "value":
            name = draw(st.sampled_from(sorted(targets)))
            fields[name] = draw(targets[name])
            line = ",".join(fields.values())
        elif how == "short":
            keep = draw(st.integers(1, layout.short_from - 1))
            line = ",".join(list(fields.values())[:keep])
        elif how == "extra":
            line = ",".join([*fields.values(), draw(st.sampled_from(["x", "1", "0.5", "true", ",x", ",,1", "x,"]))])
        elif how == "header":  # the header again: files joined with `cat`
            line = ",".join(name for name, _ in layout.columns)
            reason = "repeated_header" if layout.fmt not in ("tardis", "rtml") else None  # (fixed layouts)
        pos = draw(st.integers(1, len(rows)))  # the first row stays good
        if how == "duplicate" and any(k == "id" for _, k in layout.columns):  # an id seen before
            ids = next(n for n, k in layout.columns if k == "id")
            earlier = [x.i for x in rows[:pos] if x.good]
            fields[ids] = layout.good(draw(st.sampled_from(earlier)), "", "", "", 0)[ids]
            line = ",".join(fields.values())
        elif how == "duplicate":  # kraken has no ids: the same record twice is two trades
            fields["price"] = "nan"
            line = ",".join(fields.values())
        rows.insert(pos, Row(line, False, reason=reason))
    header = [",".join(n for n, _ in layout.columns)] if layout.header else []
    return rows, "\n".join([*header, *(r.line for r in rows)]) + "\n"


def ingest(path: Path, data_dir: Path, fmt: str):
    return CliRunner().invoke(
        cli,
        ["ingest", "--source", "replay", "--path", str(path), "--format", fmt, "--json", "--data-dir", str(data_dir)],
        catch_exceptions=True,
    )


def check_file(layout: Layout, rows: list[Row], text: str, fmt: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rtml-prop-"))
    try:
        path = tmp / layout.filename
        path.write_text(text)
        r = ingest(path, tmp / "data", fmt)
        assert r.exception is None or isinstance(r.exception, SystemExit), r.output
        assert r.exit_code == 0, f"a file with {sum(not x.good for x in rows)} bad rows of {len(rows)}:\n{r.output}"
        summary = json.loads(r.stdout)
        good = [x for x in rows if x.good]
        first_line = 2 if layout.header else 1
        bad_lines = [n for n, x in enumerate(rows, first_line) if not x.good]
        assert summary["written"] == len(good), text
        assert summary["quarantined_total"] == len(bad_lines), text
        # every good row, exactly
        log = ParquetLog(tmp / "data", "ticks").read_all().sort("ts")
        assert log["ts"].dt.epoch("ns").to_list() == [layout.expected_ns(x.i, x.micros) for x in good]
        assert log["price"].to_list() == [float(x.price) for x in good]
        assert log["qty"].to_list() == [float(x.qty) for x in good]
        if any(k in ("side", "maker") for _, k in layout.columns):
            assert log["side"].to_list() == [x.side for x in good]
        ids = next((n for n, k in layout.columns if k == "id"), None)
        if ids is not None:
            assert log["trade_id"].to_list() == [layout.good(x.i, "", "", "", 0)[ids] for x in good]
        # every bad row, in the quarantine with a reason and its line
        if bad_lines:
            q = read_quarantine(tmp / "data")
            where = q["where"].str.extract(r":(\d+)$").cast(pl.Int64).sort().to_list()
            assert where == bad_lines, (text, q)
            assert q["reason"].null_count() == 0 and (q["reason"] != "").all()
            reasons = dict(zip(q["where"].str.extract(r":(\d+)$").cast(pl.Int64), q["reason"], strict=True))
            known = {n: x.reason for n, x in enumerate(rows, first_line) if x.reason}
            assert {n: reasons[n] for n in known} == known, text
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_bad_row_is_quarantined_and_every_good_row_written(name):
    """With the layout named by --format, or recognised by --format auto."""
    layout = LAYOUTS[name]

    @PROPERTY
    @given(trade_files(layout), st.sampled_from([layout.fmt, "auto"]))
    def run(generated, fmt):
        rows, text = generated
        check_file(layout, rows, text, fmt)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_file_of_mostly_bad_rows_is_a_clear_error_and_nothing_is_written(name):
    layout = LAYOUTS[name]
    targets = bad_values(layout)

    @PROPERTY
    @given(st.data())
    def run(data):
        n = data.draw(st.integers(6, 40))
        lines = []
        for i in range(n):
            fields = layout.good(i, "100", "1", "buy", 0)
            if i % 4:  # three rows in four: a value that does not parse
                col = data.draw(st.sampled_from(sorted(targets)))
                fields[col] = data.draw(targets[col])
            lines.append(",".join(fields.values()))
        header = [",".join(c for c, _ in layout.columns)] if layout.header else []
        tmp = Path(tempfile.mkdtemp(prefix="rtml-prop-"))
        try:
            path = tmp / layout.filename
            path.write_text("\n".join([*header, *lines]) + "\n")
            r = ingest(path, tmp / "data", layout.fmt)
            assert r.exception is None or isinstance(r.exception, SystemExit), r.output
            assert r.exit_code == 1 and r.output.startswith("Error: "), r.output
            assert "Traceback" not in r.output and "do not parse" in r.output, r.output
            assert not ParquetLog(tmp / "data", "ticks").partitions()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    run()
