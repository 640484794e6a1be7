"""The Kraken WebSocket v2 source against a real local server speaking the protocol."""

from __future__ import annotations

import json
import threading
import time

import polars as pl
import pytest

from rtml_cli.errors import SourceError
from rtml_cli.log import ParquetLog
from rtml_cli.sources.kraken import KrakenSource
from tests.conftest import assert_clean_error
from tests.fake_kraken import DROP, HEARTBEAT, FakeKraken, trade, trade_msg


def collect(src: KrakenSource, until, timeout: float = 10.0) -> tuple[pl.DataFrame, list[str]]:
    """Run the source until `until(rows)` holds (or the timeout), then stop it and drain."""
    stop = threading.Event()
    frames, gaps = [], []
    deadline = time.monotonic() + timeout
    for batch in src.batches(stop):
        if batch.frame.height:
            frames.append(batch.frame)
        gaps.extend(batch.gaps)
        rows = sum(f.height for f in frames)
        if until(rows) or time.monotonic() > deadline:
            stop.set()
    return (pl.concat(frames) if frames else pl.DataFrame()), gaps


def source(server: FakeKraken, symbols=("BTC/USD",), **kw) -> KrakenSource:
    return KrakenSource(list(symbols), url=server.url, batch_interval=0.05, backoff_initial=0.05,
                        backoff_max=0.2, rng_seed=1, **kw)


def test_trades_arrive_once_in_order_with_exact_values_and_heartbeats_add_nothing():
    raw = ('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell",'
           '"price":65000.123456789,"qty":0.00012345,"ord_type":"limit","trade_id":12,'
           '"timestamp":"2026-11-26T12:00:01.123456Z"}]}')
    script = [
        trade_msg("snapshot", [trade(10, price=0.1, qty=0.2), trade(11, side="sell")]),
        HEARTBEAT,
        raw,
        HEARTBEAT,
        trade_msg("update", [trade(13, symbol="BTC/USD", price="65001", ts="2026-11-26T12:00:02Z")]),
    ]
    with FakeKraken([script]) as server:
        df, gaps = collect(source(server), lambda n: n >= 4)
    assert df["trade_id"].to_list() == ["10", "11", "12", "13"]
    assert df["price"].to_list() == [0.1, 65000.1, float("65000.123456789"), 65001.0]
    assert df["qty"].to_list() == [0.2, 0.5, float("0.00012345"), 0.5]
    assert df["side"].to_list() == ["buy", "sell", "sell", "buy"]
    assert df["ts"].dt.epoch("ns").to_list()[2] == 1_795_694_401_123_456_000
    assert df["_parse_problem"].null_count() == df.height
    assert df.schema["ts"] == pl.Datetime("ns", "UTC") and df.schema["recv_ts"] == pl.Datetime("ns", "UTC")
    assert gaps == []
    assert server.subscriptions[0] == {
        "method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True}
    }


def test_an_abrupt_disconnect_reconnects_resubscribes_skips_repeats_and_reports_gaps():
    first = [trade_msg("snapshot", [trade(1), trade(2), trade(3)]), trade_msg("update", [trade(4)]), 0.1, DROP]
    second = [trade_msg("snapshot", [trade(2), trade(3), trade(4), trade(5)]), trade_msg("update", [trade(8)])]
    events: list[str] = []
    with FakeKraken([first, second]) as server:
        df, gaps = collect(source(server, on_event=events.append), lambda n: n >= 6)
        assert server.connections == 2 and len(server.subscriptions) == 2
    assert df["trade_id"].to_list() == ["1", "2", "3", "4", "5", "8"]
    assert gaps == ["BTC/USD: trade_id gap 6..7 (2 missing)"]
    assert any(e.startswith(f"disconnected from {server.url}") and "reconnecting in" in e for e in events)


def test_a_refused_subscription_is_an_error_naming_the_symbol():
    with FakeKraken([[]], refuse=("BAD/SYM",)) as server:
        with pytest.raises(SourceError, match="refused the subscription for BAD/SYM.*not supported"):
            collect(source(server, symbols=("BTC/USD", "BAD/SYM")), lambda n: False, timeout=5)


def test_malformed_trades_are_flagged_for_quarantine_not_crashed_on():
    bad = [
        trade(1, price="abc"),
        {k: v for k, v in trade(2).items() if k != "qty"},
        trade(3, ts="yesterday"),
        trade(4),
    ]
    with FakeKraken([[trade_msg("update", bad), "not json at all", '["a list"]']]) as server:
        df, _ = collect(source(server), lambda n: n >= 4)
    assert df["_parse_problem"].to_list() == ["unparseable_price", "missing_qty", "unparseable_ts", None]
    assert json.loads(df["_raw"][0])["price"] == "abc"


def test_stop_ends_the_stream_promptly_even_when_the_market_is_silent():
    with FakeKraken([[]]) as server:
        src = source(server)
        stop = threading.Event()
        done = threading.Event()
        batches = []

        def run():
            batches.extend(src.batches(stop))
            done.set()

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        stop.set()
        assert done.wait(5), "the source did not stop"
        t.join(5)
    assert batches and all(b.frame.height == 0 for b in batches)  # empty batches keep flushes going


def test_unreachable_endpoint_keeps_retrying_with_backoff_until_stopped():
    events: list[str] = []
    src = KrakenSource(["BTC/USD"], url="ws://127.0.0.1:9", backoff_initial=0.01, backoff_max=0.05,
                       rng_seed=3, on_event=events.append)
    stop = threading.Event()
    t = threading.Timer(0.5, stop.set)
    t.start()
    assert list(src.batches(stop)) == []
    t.join()
    assert len(events) >= 3 and all("reconnecting in" in e for e in events)


def test_rtml_ingest_from_kraken_writes_good_trades_and_quarantines_bad_ones(rtml, data_dir):
    script = [
        trade_msg("snapshot", [trade(100, "BTC/USD", 65000.5), trade(7, "ETH/USD", 3200.25, side="sell")]),
        trade_msg("update", [trade(101, "BTC/USD", qty=-1), trade(102, "BTC/USD", side="hold")]),
        trade_msg("update", [trade(103, "BTC/USD", 65010.0), trade(9, "ETH/USD", 3201.0)]),
        0.2,
        DROP,
    ]
    again = [trade_msg("snapshot", [trade(103, "BTC/USD", 65010.0), trade(104, "BTC/USD", 65011.0)])]
    with FakeKraken([script, again]) as server:
        r = rtml("ingest", "--source", "kraken", "--url", server.url, "--symbols", "BTC/USD,ETH/USD",
                 "--duration", "2", "--flush-interval", "0.2", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["written"] == 5
    assert summary["quarantined"] == {"bad_side": 1, "non_positive_qty": 1}
    assert summary["gaps"] == ["ETH/USD: trade_id gap 8..8 (1 missing)"]
    log = ParquetLog(data_dir, "ticks")
    btc = log.read_after("BTC/USD", -1)
    assert btc["trade_id"].to_list() == ["100", "103", "104"]
    assert btc["offset"].to_list() == [0, 1, 2]
    assert log.read_after("ETH/USD", -1)["price"].to_list() == [3200.25, 3201.0]


def test_rtml_ingest_from_kraken_with_an_unknown_pair_is_a_clear_error(rtml):
    with FakeKraken([[]], refuse=("NOPE/USD",)) as server:
        r = rtml("ingest", "--source", "kraken", "--url", server.url, "--symbols", "NOPE/USD", "--duration", "5")
    assert_clean_error(r, "refused the subscription for NOPE/USD")
