"""The Kraken WebSocket v2 source against a real local server speaking the protocol."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from rtml_cli.errors import SourceError
from rtml_cli.log import ParquetLog
from rtml_cli.schema import tick_schema
from rtml_cli.sources.kraken import KrakenSource
from tests.conftest import assert_clean_error, rtml_process
from tests.feeds import DROP, FakeFeed, Run, delays, free_port, rows_at_least

# -- a local Kraken ---------------------------------------------------------------------------

HEARTBEAT = '{"channel":"heartbeat"}'
STATUS = (
    '{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,'
    '"system":"online","version":"2.0.10"}]}'
)
STAMP = '"time_in":"2026-11-26T12:00:00.000001Z","time_out":"2026-11-26T12:00:00.000002Z"'


def trade(
    tid: int | str,
    symbol: str = "BTC/USD",
    price: float | str = 65000.1,
    qty: float | str = 0.5,
    side: str = "buy",
    ts: str = "2026-11-26T12:00:00.000000Z",
) -> dict:
    return {
        "symbol": symbol,
        "side": side,
        "price": price,
        "qty": qty,
        "ord_type": "market",
        "trade_id": tid,
        "timestamp": ts,
    }


def trade_msg(kind: str, trades: list[dict]) -> dict:
    return {"channel": "trade", "type": kind, "data": trades}


def fake_kraken(scripts: list[list], refuse: tuple[str, ...] = ()) -> FakeFeed:
    """A local Kraken: a status message on connect, one acknowledgement per symbol of the
    subscribe request (a refusal for the symbols in `refuse`), a heartbeat every 0.1 s."""

    def answer(request: dict) -> list[str]:
        replies = []
        for symbol in request["params"]["symbol"]:
            if symbol in refuse:
                replies.append(
                    f'{{"error":"Currency pair not supported {symbol}","method":"subscribe",'
                    f'"success":false,"symbol":"{symbol}",{STAMP}}}'
                )
            else:
                replies.append(
                    f'{{"method":"subscribe","result":{{"channel":"trade","snapshot":true,'
                    f'"symbol":"{symbol}"}},"success":true,{STAMP}}}'
                )
        return replies

    return FakeFeed(scripts, answer, greeting=(STATUS,), heartbeat=HEARTBEAT)


def source(server: FakeFeed | str, symbols=("BTC/USD",), **kw) -> KrakenSource:
    url = server if isinstance(server, str) else server.url
    opts = {"batch_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.2, "rng_seed": 1} | kw
    return KrakenSource(list(symbols), url=url, **opts)


# -- the feed -----------------------------------------------------------------------------------

EXACT = (
    '{"symbol":"BTC/USD","side":"sell","price":65000.1234567890,"qty":1.2345E-4,'
    '"ord_type":"limit","trade_id":12,"timestamp":"2026-11-26T12:00:01.123456Z"}'
)


def test_trades_arrive_once_in_order_with_exact_values_and_heartbeats_add_nothing():
    script = [
        trade_msg("snapshot", [trade(10, price="0.1", qty="0.2"), trade(11, side="sell")]),
        HEARTBEAT,
        '{"channel":"trade","type":"update","data":[' + EXACT + "]}",
        HEARTBEAT,
        HEARTBEAT,
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":0.3,'
        '"qty":3,"ord_type":"market","trade_id":13,"timestamp":"2026-11-26T13:00:02+01:00"}]}',
    ]
    before = time.time_ns()
    with fake_kraken([script]) as server:
        run = Run(source(server), until=rows_at_least(4)).wait()
        assert server.connections == 1
    after = time.time_ns()
    df = run.frame
    assert df["trade_id"].to_list() == ["10", "11", "12", "13"]
    # Each float is the nearest double to Kraken's decimal text, made in one step.
    assert df["price"].to_list() == [0.1, 65000.1, float("65000.1234567890"), 0.3]
    assert df["qty"].to_list() == [0.2, 0.5, float("1.2345E-4"), 3.0]
    assert df["side"].to_list() == ["buy", "sell", "sell", "buy"]
    assert df["symbol"].to_list() == ["BTC/USD"] * 4
    assert df["ts"].dt.epoch("ns").to_list() == [
        1_795_694_400_000_000_000,
        1_795_694_400_000_000_000,
        1_795_694_401_123_456_000,
        1_795_694_402_000_000_000,
    ]
    assert all(before <= t <= after for t in df["recv_ts"].dt.epoch("ns").to_list())
    assert df["_parse_problem"].null_count() == df.height
    assert df.select(run.batches[0].raw)["_raw"][2] == EXACT  # quarantine would get the trade as sent
    assert {k: df.schema[k] for k in tick_schema()} == tick_schema()
    assert run.gaps == []
    assert server.subscriptions == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True}}
    ]


def test_an_abrupt_disconnect_reconnects_resubscribes_skips_repeats_and_reports_the_gap():
    first = [
        trade_msg("snapshot", [trade(1), trade(2), trade(3)]),
        HEARTBEAT,
        trade_msg("update", [trade(4)]),
        0.1,
        DROP,
    ]
    # The new snapshot repeats 2..4, then 8 arrives: 6 and 7 were traded while the client was away.
    second = [
        trade_msg("snapshot", [trade(2), trade(3), trade(4), trade(5)]),
        HEARTBEAT,
        trade_msg("update", [trade(8)]),
        trade_msg("update", [trade(9)]),
    ]
    events: list[str] = []
    with fake_kraken([first, second]) as server:
        run = Run(source(server, on_event=events.append), until=rows_at_least(7)).wait()
        assert server.connections == 2
        assert server.subscriptions[0] == server.subscriptions[1]
    assert run.frame["trade_id"].to_list() == ["1", "2", "3", "4", "5", "8", "9"]
    assert run.gaps == ["BTC/USD: trade_id gap 6..7 (2 missing)"]
    with_gap = next(b for b in run.batches if b.gaps)
    assert "8" in with_gap.frame["trade_id"].to_list()  # reported with the batch holding the trade after it
    assert events[0].startswith(f"disconnected from {server.url}: ") and "reconnecting in" in events[0]
    assert events[1:] == [f"reconnected to {server.url}", "BTC/USD: trade_id gap 6..7 (2 missing)"]


def test_ids_are_tracked_per_symbol_and_non_integer_ids_pass_through():
    script = [
        trade_msg("snapshot", [trade(100, "BTC/USD"), trade(7, "ETH/USD"), trade(101, "BTC/USD")]),
        trade_msg("update", [trade(9, "ETH/USD"), trade(8, "ETH/USD"), trade("x1", "ETH/USD"), trade("x1", "ETH/USD")]),
    ]
    with fake_kraken([script]) as server:
        run = Run(source(server, symbols=("BTC/USD", "ETH/USD")), until=rows_at_least(6)).wait()
    df = run.frame
    assert list(zip(df["symbol"], df["trade_id"], strict=True)) == [
        ("BTC/USD", "100"),
        ("ETH/USD", "7"),
        ("BTC/USD", "101"),
        ("ETH/USD", "9"),
        ("ETH/USD", "x1"),
        ("ETH/USD", "x1"),
    ]  # 8 came after 9: dropped as already covered; "x1" is left to de-duplication downstream
    assert run.gaps == ["ETH/USD: trade_id gap 8..8 (1 missing)"]


@pytest.mark.slow
def test_a_refused_subscription_ends_the_source_with_an_error_naming_the_symbol():
    with fake_kraken([[]], refuse=("BAD/SYM",)) as server:
        run = Run(source(server, symbols=("BTC/USD", "BAD/SYM")))
        with pytest.raises(SourceError) as err:
            run.wait()
        time.sleep(0.3)  # long enough for a (wrong) retry to show
        assert server.connections == 1
    assert str(err.value) == (
        "Kraken refused the subscription for BAD/SYM: Currency pair not supported BAD/SYM; "
        "check the symbol names (Kraken v2 uses BTC/USD style)"
    )


def test_malformed_trades_are_flagged_for_quarantine_not_crashed_on():
    bad = [
        trade(1, price="abc"),
        {k: v for k, v in trade(2).items() if k != "qty"},
        trade(3, ts="yesterday"),
        {k: v for k, v in trade(4).items() if k != "trade_id"},
        trade(5, price=True, side="Hold"),
        "not a trade",
        trade(6),
    ]
    script = [
        "not json at all",
        '["a list"]',
        '{"channel":"trade","type":"update","data":"oops"}',
        trade_msg("update", bad),
    ]
    events: list[str] = []
    with fake_kraken([script]) as server:
        run = Run(source(server, on_event=events.append), until=rows_at_least(7)).wait()
    df = run.frame
    assert df["_parse_problem"].to_list() == [
        "unparseable_price",
        "missing_qty",
        "unparseable_ts",
        "missing_trade_id",
        "unparseable_price",
        "missing_ts",  # the entry that is not an object: nothing parses (ingest reports its missing symbol)
        None,
    ]
    assert df["side"][4] == "Hold"  # passed on unchanged: validation reports it
    raw = df.select(run.batches[0].raw)["_raw"].to_list()
    assert json.loads(raw[0])["price"] == "abc" and json.loads(raw[4])["price"] is True
    assert raw[5] == '"not a trade"'
    assert any("not JSON" in e for e in events)


# -- stopping, liveness, backoff ----------------------------------------------------------------


@pytest.mark.slow
def test_stop_ends_the_stream_promptly_and_empty_batches_keep_coming_when_the_market_is_silent():
    with fake_kraken([[]]) as server:
        run = Run(source(server, batch_interval=0.05))
        time.sleep(0.5)
        stopped = time.monotonic()
        run.stop.set()
        run.wait()
        assert time.monotonic() - stopped < 0.6
    assert len(run.batches) >= 4
    assert all(b.frame.height == 0 and b.frame.schema == run.batches[0].frame.schema for b in run.batches)
    assert {k: run.batches[0].frame.schema[k] for k in tick_schema()} == tick_schema()


@pytest.mark.slow
def test_stop_is_prompt_even_while_a_handshake_hangs():
    with socket.socket() as mute:  # accepts TCP connections, never answers the WebSocket upgrade
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        run = Run(source(f"ws://127.0.0.1:{mute.getsockname()[1]}", connect_timeout=10.0))
        time.sleep(0.5)
        stopped = time.monotonic()
        run.stop.set()
        run.wait()
        assert time.monotonic() - stopped < 0.6
    assert len(run.batches) >= 4  # the batch clock ran on while connecting


@pytest.mark.slow
def test_a_silent_connection_is_treated_as_dead_and_replaced():
    first = [trade_msg("snapshot", [trade(1)]), 0.8]  # no heartbeats: a link that died quietly
    second = [trade_msg("snapshot", [trade(1), trade(2)])]
    events: list[str] = []
    with fake_kraken([first, second]) as server:
        run = Run(source(server, idle_timeout=0.3, on_event=events.append), until=rows_at_least(2)).wait()
        assert server.connections == 2
    assert run.frame["trade_id"].to_list() == ["1", "2"]
    assert events[0].startswith(f"disconnected from {server.url}: nothing received for 0.3 s; reconnecting in")


def test_failed_connects_back_off_exponentially_with_full_jitter_up_to_the_cap():
    events: list[str] = []
    url = f"ws://127.0.0.1:{free_port()}"
    run = Run(
        source(url, backoff_initial=0.02, backoff_max=0.08, rng_seed=3, on_event=events.append),
        until=lambda batches: len(events) >= 6,
    )
    run.wait()
    rng = random.Random(3)
    expected = [f"{rng.uniform(0, min(0.08, 0.02 * 2**k)):.2g}" for k in range(6)]
    assert delays(events)[:6] == expected
    assert all(e.startswith(f"could not connect to {url}: ") for e in events)
    assert run.frame.height == 0


def test_backoff_starts_over_after_each_successful_subscription():
    events: list[str] = []
    with fake_kraken([[DROP]] * 4) as server:
        src = source(server, backoff_initial=0.05, backoff_max=5.0, rng_seed=7, on_event=events.append)
        Run(src, until=lambda batches: server.connections >= 4).wait()
    rng = random.Random(7)
    assert delays(events)[:3] == [f"{rng.uniform(0, 0.05):.2g}" for _ in range(3)]


def test_a_url_that_is_not_a_websocket_url_is_an_error_not_a_retry_loop():
    with pytest.raises(SourceError, match="is not a WebSocket URL"):
        Run(source("http://127.0.0.1:1/v2")).wait()


# -- through `rtml ingest` ----------------------------------------------------------------------


@pytest.mark.slow
def test_rtml_ingest_from_kraken_writes_good_trades_and_quarantines_bad_ones(rtml, data_dir):
    script = [
        trade_msg("snapshot", [trade(100, "BTC/USD", 65000.5), trade(7, "ETH/USD", 3200.25, side="sell")]),
        trade_msg("update", [trade(101, "BTC/USD", qty=-1), trade(102, "BTC/USD", side="hold")]),
        trade_msg("update", [trade(103, "BTC/USD", 65010.0), trade(9, "ETH/USD", 3201.0)]),
        0.2,
        DROP,
    ]
    again = [trade_msg("snapshot", [trade(103, "BTC/USD", 65010.0), trade(104, "BTC/USD", 65011.0)])]
    with fake_kraken([script, again]) as server:
        r = rtml(
            "ingest",
            "--source",
            "kraken",
            "--url",
            server.url,
            "--symbols",
            "BTC/USD,ETH/USD",
            "--duration",
            "2",
            "--flush-interval",
            "0.2",
            "--json",
        )
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
    with fake_kraken([[]], refuse=("NOPE/USD",)) as server:
        r = rtml("ingest", "--source", "kraken", "--url", server.url, "--symbols", "NOPE/USD", "--duration", "5")
    assert_clean_error(r, "refused the subscription for NOPE/USD")


@pytest.mark.slow
def test_a_run_that_never_connects_says_so_while_retrying_and_exits_1(tmp_path):
    """It used to say "waiting for trades" while it had no connection, and exit 0 at the end."""
    url = f"ws://127.0.0.1:{free_port()}"
    # (6 s: its status line, which says "retrying in", comes every 2 s; a loaded machine delays it)
    p = rtml_process(["ingest", "--source", "kraken", "--url", url, "--duration", "6", "--data-dir", str(tmp_path)])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    assert "retrying in" in err and "waiting for trades" not in err
    assert f"never connected to the feed (could not connect to {url}" in err and "Traceback" not in err
