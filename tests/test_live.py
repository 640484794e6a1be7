"""The live Binance (spot and USD-M futures) and Coinbase Advanced Trade feeds, each against a
real local WebSocket server speaking the exchange's documented messages: subscription,
exact decimals, the taker's side, reconnects after a dropped connection with repeats skipped
and gaps reported, refusals, and malformed trades sent to quarantine. (Kraken's feed has the
same guarantees, tested in test_kraken.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from rtml_cli.errors import SourceError
from rtml_cli.log import ParquetLog
from rtml_cli.schema import tick_schema
from rtml_cli.sources.binance import BinanceFuturesSource, BinanceSource
from rtml_cli.sources.coinbase import CoinbaseSource
from rtml_cli.sources.live import LiveSource
from tests.conftest import assert_clean_error, rtml_process
from tests.feeds import DROP, FakeFeed, Run, free_port, rows_at_least

T0_NS = 1_795_694_400_000_000_000  # 2026-11-26T12:00:00Z


@dataclass(frozen=True)
class T:
    """A trade to send: what the tick must be."""

    symbol: str
    id: int
    price: str = "65000.1"
    qty: str = "0.5"
    side: str = "buy"  # the taker's
    us: int = 0  # µs after T0


# -- Binance ---------------------------------------------------------------------------------------


def binance_trade(t: T, futures: bool = False, kind: str = "MARKET") -> str:
    """A `<symbol>@trade` event as Binance sends it (times in ms; the futures one says its kind)."""
    ms = (T0_NS // 1000 + t.us) // 1000
    maker = "true" if t.side == "sell" else "false"  # m: the buyer was the maker, so the taker sold
    tail = f',"X":"{kind}","m":{maker}' if futures else f',"m":{maker},"M":true'
    return (
        f'{{"e":"trade","E":{ms + 3},"s":"{t.symbol}","t":{t.id},"p":"{t.price}","q":"{t.qty}","T":{ms}{tail}}}'
        if not futures
        else f'{{"e":"trade","E":{ms + 3},"T":{ms},"s":"{t.symbol}","t":{t.id},"p":"{t.price}","q":"{t.qty}"{tail}}}'
    )


def binance_server(scripts: list[list], refuse: bool = False) -> FakeFeed:
    """A local Binance: SUBSCRIBE answered `{"result":null,"id":N}`, or the error Binance gives a
    stream name it cannot parse. No heartbeats: Binance pings at the WebSocket level."""

    def answer(request: dict) -> list[str]:
        if refuse:
            return [f'{{"error":{{"code":2,"msg":"Invalid request: invalid stream"}},"id":{request["id"]}}}']
        return [f'{{"result":null,"id":{request["id"]}}}']

    return FakeFeed(scripts, answer)


# -- Coinbase --------------------------------------------------------------------------------------


def coinbase_trades(trades: list[T], kind: str = "update", seq: int = 1) -> str:
    """A `market_trades` message: newest trade first, as Coinbase sends them; `side` the maker's."""
    entries = [
        f'{{"trade_id":"{t.id}","product_id":"{t.symbol}","price":"{t.price}","size":"{t.qty}",'
        f'"side":"{"SELL" if t.side == "buy" else "BUY"}","time":"2026-11-26T12:00:{t.us // 1_000_000:02d}.'
        f'{t.us % 1_000_000:06d}Z"}}'
        for t in sorted(trades, key=lambda t: -t.id)
    ]
    return (
        f'{{"channel":"market_trades","client_id":"","timestamp":"2026-11-26T12:00:05.123456789Z",'
        f'"sequence_num":{seq},"events":[{{"type":"{kind}","trades":[{",".join(entries)}]}}]}}'
    )


COINBASE_HEARTBEAT = (
    '{"channel":"heartbeats","client_id":"","timestamp":"2026-11-26T12:00:05.1Z","sequence_num":9,'
    '"events":[{"current_time":"2026-11-26 12:00:05.1 +0000 UTC","heartbeat_counter":9}]}'
)


def coinbase_server(scripts: list[list], unknown: tuple[str, ...] = (), error: str | None = None) -> FakeFeed:
    """A local Coinbase: a subscribe is answered with a `subscriptions` message listing what is
    subscribed (a product it does not know left out), or `{"type":"error"}`; heartbeats once asked for."""
    subscribed: dict[str, list[str]] = {}

    def answer(request: dict) -> list[str]:
        if error is not None:
            return [json.dumps({"type": "error", "message": error})]
        channel = request["channel"]
        products = [p for p in request.get("product_ids", [channel]) if p not in unknown]
        if products:
            subscribed[channel] = products
        return [
            json.dumps(
                {
                    "channel": "subscriptions",
                    "client_id": "",
                    "timestamp": "2026-11-26T12:00:00.1Z",
                    "sequence_num": 0,
                    "events": [{"subscriptions": subscribed}],
                }
            )
        ]

    return FakeFeed(scripts, answer, heartbeat=COINBASE_HEARTBEAT)


# -- the exchanges, for the tests they share -------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    kind: str
    source: type[LiveSource]
    symbols: tuple[str, str]
    server: Callable[..., FakeFeed]
    messages: Callable[[list[T]], list[str]]  # script steps carrying these trades
    subscription: Callable[[list[str]], dict]  # the request the exchange documents
    refused: str  # the error a refused subscription ends with

    def feed(self, scripts: list[list], **kw) -> FakeFeed:
        return self.server(scripts, **kw)

    def open(self, server: FakeFeed | str, symbols=None, **kw) -> LiveSource:
        url = server if isinstance(server, str) else server.url
        opts = {"batch_interval": 0.05, "backoff_initial": 0.05, "backoff_max": 0.2, "rng_seed": 1} | kw
        return self.source(list(symbols or self.symbols[:1]), url=url, **opts)


EXCHANGES = {
    "binance": Exchange(
        "binance",
        BinanceSource,
        ("BTCUSDT", "ETHUSDT"),
        binance_server,
        lambda trades: [binance_trade(t) for t in trades],
        lambda symbols: {"method": "SUBSCRIBE", "params": [f"{s.lower()}@trade" for s in symbols], "id": 1},
        "Binance refused the subscription to BTCUSDT: Invalid request: invalid stream (code 2)",
    ),
    "binance-futures": Exchange(
        "binance-futures",
        BinanceFuturesSource,
        ("BTCUSDT", "ETHUSDT"),
        binance_server,
        lambda trades: [binance_trade(t, futures=True) for t in trades],
        lambda symbols: {"method": "SUBSCRIBE", "params": [f"{s.lower()}@trade" for s in symbols], "id": 1},
        "Binance refused the subscription to BTCUSDT: Invalid request: invalid stream (code 2)",
    ),
    "coinbase": Exchange(
        "coinbase",
        CoinbaseSource,
        ("BTC-USD", "ETH-USD"),
        coinbase_server,
        lambda trades: [coinbase_trades(trades)],
        lambda symbols: {"type": "subscribe", "product_ids": symbols, "channel": "market_trades"},
        "Coinbase refused the market_trades subscription for BTC-USD: failure to subscribe",
    ),
}
EACH = pytest.mark.parametrize("ex", list(EXCHANGES.values()), ids=list(EXCHANGES))


@EACH
def test_trades_arrive_once_with_exact_values_and_the_takers_side(ex: Exchange):
    s = ex.symbols[0]
    trades = [
        T(s, 10, "0.1", "0.2", "buy", 1),
        T(s, 11, "65000.1234567890", "1.2345E-4", "sell", 999_999),
        T(s, 12, "65000.12345678901234567", "3", "buy", 2_000_000),
    ]
    before = time.time_ns()
    with ex.feed([[*ex.messages(trades[:2]), *ex.messages(trades[2:])]]) as server:
        run = Run(ex.open(server), until=rows_at_least(3)).wait()
        assert server.connections == 1
        assert server.subscriptions == [ex.subscription([s])]
    after = time.time_ns()
    df = run.frame
    assert df["trade_id"].to_list() == ["10", "11", "12"]
    # each float is the nearest double to the exchange's decimal text, made in one step
    assert df["price"].to_list() == [float(t.price) for t in trades]
    assert df["qty"].to_list() == [float(t.qty) for t in trades]
    assert df["side"].to_list() == ["buy", "sell", "buy"]
    assert df["symbol"].to_list() == [s] * 3
    # Binance stamps milliseconds, Coinbase microseconds
    unit = 1_000_000 if ex.kind.startswith("binance") else 1_000
    assert df["ts"].dt.epoch("ns").to_list() == [T0_NS + t.us * 1000 // unit * unit for t in trades]
    assert all(before <= t <= after for t in df["recv_ts"].dt.epoch("ns").to_list())
    assert df["_parse_problem"].null_count() == 3
    assert {k: df.schema[k] for k in tick_schema()} == tick_schema()
    assert run.gaps == []


@EACH
def test_a_dropped_connection_reconnects_resubscribes_skips_repeats_and_reports_the_gap(ex: Exchange):
    a, b = ex.symbols
    first = [*ex.messages([T(a, 1), T(a, 2), T(b, 7)]), *ex.messages([T(a, 3)]), 0.1, DROP]
    # what the exchange re-sends after the reconnect (2, 3: Coinbase's snapshot), then 6:
    # 4 and 5 were traded while the client was away; ETH's 8 follows its 7
    second = [*ex.messages([T(a, 2), T(a, 3)]), *ex.messages([T(a, 6), T(b, 8)]), *ex.messages([T(a, 7)])]
    events: list[str] = []
    with ex.feed([first, second]) as server:
        run = Run(ex.open(server, symbols=[a, b], on_event=events.append), until=rows_at_least(7)).wait()
        assert server.connections == 2
        assert server.subscriptions == [ex.subscription([a, b])] * 2
    df = run.frame
    assert [(s, i) for s, i in zip(df["symbol"], df["trade_id"], strict=True) if s == a] == [
        (a, "1"),
        (a, "2"),
        (a, "3"),
        (a, "6"),
        (a, "7"),
    ]
    assert df.filter(df["symbol"] == b)["trade_id"].to_list() == ["7", "8"]
    assert run.gaps == [f"{a}: trade_id gap 4..5 (2 missing)"]
    assert events[0].startswith(f"disconnected from {server.url}: ") and "reconnecting in" in events[0]
    assert events[1:] == [f"reconnected to {server.url}", f"{a}: trade_id gap 4..5 (2 missing)"]


@EACH
def test_a_refused_subscription_is_an_error_not_a_retry_loop(ex: Exchange):
    refuse = {"error": "failure to subscribe"} if ex.kind == "coinbase" else {"refuse": True}
    with ex.feed([[]], **refuse) as server:
        run = Run(ex.open(server))
        with pytest.raises(SourceError) as err:
            run.wait()
        assert server.connections == 1
    assert str(err.value).startswith(ex.refused), str(err.value)


@EACH
def test_malformed_trades_are_flagged_for_quarantine_not_crashed_on(ex: Exchange):
    s = ex.symbols[0]
    bad = ex.messages([T(s, 1, price="abc"), T(s, 2, qty=""), T(s, 3, price="-1")])
    good = ex.messages([T(s, 4)])
    events: list[str] = []
    with ex.feed([["not json at all", "[1, 2]", '{"unexpected": true}', *bad, *good]]) as server:
        run = Run(ex.open(server, on_event=events.append), until=rows_at_least(4)).wait()
    df = run.frame
    assert df["trade_id"].to_list() == ["1", "2", "3", "4"]
    # a negative price parses; validation in ingest quarantines it (non_positive_price)
    assert df["_parse_problem"].to_list() == ["unparseable_price", "missing_qty", None, None]
    raw = df.select(run.batches[0].raw)["_raw"].to_list()
    assert '"abc"' in raw[0] and all(raw)
    assert any("not JSON" in e for e in events)


@EACH
def test_while_it_cannot_connect_it_says_retrying_batches_keep_coming_and_stop_ends_it(ex: Exchange):
    events: list[str] = []
    src = ex.open(f"ws://127.0.0.1:{free_port()}", on_event=events.append)
    run = Run(src, until=lambda batches: len(events) >= 2)
    run.wait()
    assert src.state.startswith("retrying in ") and "could not connect" not in src.state
    assert not src.subscribed_once and src.last_problem is not None
    assert src.last_problem.startswith("could not connect to ")
    assert run.frame.height == 0 and len(run.batches) >= 1


# -- through `rtml ingest`, each exchange ---------------------------------------------------------


@pytest.mark.slow
@EACH
def test_rtml_ingest_writes_good_trades_quarantines_bad_ones_and_survives_a_drop(ex: Exchange, rtml, data_dir):
    a, b = ex.symbols
    script = [
        *ex.messages([T(a, 100, "65000.5"), T(b, 7, "3200.25", side="sell")]),
        *ex.messages([T(a, 101, qty="-1"), T(a, 102, price="0")]),
        *ex.messages([T(a, 103, "65010.0"), T(b, 9, "3201.0")]),
        0.2,
        DROP,
    ]
    again = [*ex.messages([T(a, 103, "65010.0"), T(a, 104, "65011.0")])]
    with ex.feed([script, again]) as server:
        r = rtml(
            "ingest",
            "--source",
            ex.kind,
            "--url",
            server.url,
            "--symbols",
            f"{a},{b}",
            "--max-ticks",
            "5",  # the last of them arrives after the reconnect
            "--duration",
            "60",
            "--flush-interval",
            "0.2",
            "--json",
        )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["written"] == 5
    assert summary["quarantined"] == {"non_positive_price": 1, "non_positive_qty": 1}
    assert summary["gaps"] == [f"{b}: trade_id gap 8..8 (1 missing)"]
    log = ParquetLog(data_dir, "ticks")
    assert log.read_after(a, -1)["trade_id"].to_list() == ["100", "103", "104"]
    assert log.read_after(a, -1)["offset"].to_list() == [0, 1, 2]
    eth = log.read_after(b, -1)
    assert eth["price"].to_list() == [3200.25, 3201.0] and eth["side"].to_list() == ["sell", "buy"]


@pytest.mark.parametrize("kind", ["binance", "binance-futures", "coinbase"])
def test_a_run_that_never_connects_exits_1_saying_why(rtml, kind):
    """(What its status line says meanwhile, "retrying in N s: why", is the same code as for
    Kraken: test_kraken.py runs the command long enough to see it.)"""
    url = f"ws://127.0.0.1:{free_port()}"
    r = rtml("ingest", "--source", kind, "--url", url, "--duration", "0.5")
    assert_clean_error(r, f"never connected to the feed (could not connect to {url}")


@pytest.mark.parametrize(
    ("kind", "symbols", "fragment"),
    [
        ("binance", "BTC/USDT", "'BTC/USDT' is not a Binance symbol; Binance writes them without a separator"),
        ("binance-futures", "BTC-USDT", "'BTC-USDT' is not a Binance symbol"),
        ("coinbase", "BTC/USD", "'BTC/USD' is not a Coinbase product id; Coinbase writes them like BTC-USD"),
        ("kraken", "XBTUSD", "'XBTUSD' is not a Kraken v2 pair; Kraken writes them like BTC/USD"),
    ],
)
def test_a_symbol_in_another_exchanges_spelling_is_a_clear_error_before_connecting(rtml, kind, symbols, fragment):
    r = rtml("ingest", "--source", kind, "--symbols", symbols, "--url", f"ws://127.0.0.1:{free_port()}")
    assert_clean_error(r, fragment)


def test_url_and_speed_only_apply_where_they_mean_something(rtml):
    assert_clean_error(rtml("ingest", "--url", "ws://x"), "--url only applies to the live feeds", code=2)
    assert_clean_error(rtml("ingest", "--source", "coinbase", "--speed", "2"), "--speed does not apply", code=2)


# -- what only one exchange does ------------------------------------------------------------------


def test_binance_futures_fills_that_are_not_market_trades_are_flagged():
    trades = [T("BTCUSDT", 1), T("BTCUSDT", 2, "64000"), T("BTCUSDT", 3, "64001"), T("BTCUSDT", 4)]
    kinds = ["MARKET", "INSURANCE_FUND", "ADL", "MARKET"]
    script = [binance_trade(t, futures=True, kind=k) for t, k in zip(trades, kinds, strict=True)]
    with binance_server([script]) as server:
        run = Run(EXCHANGES["binance-futures"].open(server), until=rows_at_least(4)).wait()
    assert run.frame["_parse_problem"].to_list() == [None, "not_market_trade", "not_market_trade", None]
    assert run.gaps == []  # they take trade ids like any trade


def test_binance_combined_streams_microsecond_times_and_a_bare_error():
    ms_event = json.loads(binance_trade(T("BTCUSDT", 5, us=1_500)))
    us_event = ms_event | {"t": 6, "T": T0_NS // 1000 + 1_501}  # with timeUnit=MICROSECOND in the URL
    script = [json.dumps({"stream": "btcusdt@trade", "data": e}) for e in (ms_event, us_event)]
    with binance_server([script]) as server:
        run = Run(EXCHANGES["binance"].open(server), until=rows_at_least(2)).wait()
    assert run.frame["ts"].dt.epoch("ns").to_list() == [T0_NS + 1_000_000, T0_NS + 1_501_000]

    def bare(request: dict) -> list[str]:
        return ['{"code":1,"msg":"Invalid value type: expected Boolean"}']

    with FakeFeed([[]], bare) as server, pytest.raises(SourceError, match=r"Invalid value type.*\(code 1\)"):
        Run(EXCHANGES["binance"].open(server)).wait()


def test_binance_says_so_when_a_subscribed_symbol_stays_silent():
    """Binance acknowledges a stream of a symbol it does not list, then sends nothing."""
    events: list[str] = []
    with binance_server([[*[binance_trade(T("BTCUSDT", i)) for i in range(3)]]]) as server:
        src = EXCHANGES["binance"].open(server, symbols=["BTCUSDT", "NOSUCHUSDT"], on_event=events.append)
        src.quiet_warning = 1.0
        Run(src, until=lambda batches: any("NOSUCHUSDT" in e for e in events)).wait(timeout=10)
    assert (
        "no NOSUCHUSDT trade in 1 s since subscribing; Binance accepts a symbol it does not list without an "
        "error: check the spelling (e.g. BTCUSDT), and for futures the market"
    ) in events


def test_coinbase_asks_for_heartbeats_once_its_trades_are_subscribed_and_a_silent_link_is_replaced():
    first = [coinbase_trades([T("BTC-USD", 1)], "snapshot")]
    with coinbase_server([first, [coinbase_trades([T("BTC-USD", 1), T("BTC-USD", 2)], "snapshot")]]) as server:
        server.heartbeat = None  # heartbeats stop: a link that died quietly
        events: list[str] = []
        src = EXCHANGES["coinbase"].open(server, idle_timeout=0.3, on_event=events.append)
        run = Run(src, until=rows_at_least(2)).wait()
        assert server.requests[0] == [
            {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "market_trades"},
            {"type": "subscribe", "channel": "heartbeats"},
        ]
        assert server.connections == 2
    assert run.frame["trade_id"].to_list() == ["1", "2"]
    assert events[0].startswith(f"disconnected from {server.url}: nothing received for 0.3 s")


def test_coinbase_a_product_it_does_not_list_is_an_error():
    with coinbase_server([[]], unknown=("NOPE-USD",)) as server:
        with pytest.raises(SourceError) as err:
            Run(EXCHANGES["coinbase"].open(server, symbols=["BTC-USD", "NOPE-USD"])).wait()
        assert server.connections == 1
    assert str(err.value) == (
        "Coinbase did not subscribe to NOPE-USD: not a product it lists? Coinbase product ids are written like BTC-USD"
    )


def test_coinbase_side_is_the_makers_and_an_unknown_side_is_null():
    msg = json.loads(coinbase_trades([T("BTC-USD", 1, side="buy"), T("BTC-USD", 2, side="sell"), T("BTC-USD", 3)]))
    trades = msg["events"][0]["trades"]  # newest first
    assert [t["side"] for t in trades] == ["SELL", "BUY", "SELL"]  # the makers' sides as sent
    trades[0]["side"] = "UNKNOWN_ORDER_SIDE"
    trades[1]["side"] = "sideways"
    with coinbase_server([[json.dumps(msg)]]) as server:
        run = Run(EXCHANGES["coinbase"].open(server), until=rows_at_least(3)).wait()
    assert run.frame["side"].to_list() == ["buy", "sideways", None]  # validation reports "sideways" as bad_side


@pytest.mark.slow
def test_rtml_status_shows_what_a_live_feed_is_doing(rtml, data_dir):
    url = f"ws://127.0.0.1:{free_port()}"
    p = rtml_process(["ingest", "--source", "coinbase", "--url", url, "--data-dir", str(data_dir)])
    try:
        deadline = time.monotonic() + 30
        feed = None
        while time.monotonic() < deadline and not (feed or "").startswith("retrying in"):
            r = rtml("status", "--json")  # (an error until ingest has made the data directory)
            if r.exit_code == 0 and "stages" in (snap := json.loads(r.stdout)):
                feed = snap["stages"]["ingest"].get("feed")
            time.sleep(0.2)
        assert feed is not None and feed.startswith("retrying in ") and f"{url}" not in feed, feed
        human = " ".join(rtml("status").output.split())  # (rich wraps the line)
        assert "has no data yet; ingest is running (pid " in human and "; feed retrying in " in human, human
    finally:
        p.terminate()
        p.communicate(timeout=30)
    done = json.loads(rtml("status", "--json").stdout)["stages"]["ingest"]
    assert "feed" not in done  # not running: no feed to speak of


def test_coinbase_an_error_after_the_subscription_reconnects():
    first = [coinbase_trades([T("BTC-USD", 1)], "snapshot"), '{"type":"error","message":"slow consumer"}']
    second = [coinbase_trades([T("BTC-USD", 1), T("BTC-USD", 2)], "snapshot")]
    events: list[str] = []
    with coinbase_server([first, second]) as server:
        run = Run(EXCHANGES["coinbase"].open(server, on_event=events.append), until=rows_at_least(2)).wait()
        assert server.connections == 2
    assert run.frame["trade_id"].to_list() == ["1", "2"]
    assert events[0].startswith(f"disconnected from {server.url}: Coinbase sent an error: slow consumer; reconnecting")


def test_a_trade_without_a_side_is_flagged_and_coinbase_takes_product_ids_in_any_case():
    event = json.loads(binance_trade(T("BTCUSDT", 1)))
    del event["m"]
    with binance_server([[json.dumps(event), binance_trade(T("BTCUSDT", 2))]]) as server:
        run = Run(EXCHANGES["binance"].open(server, symbols=["btcusdt"]), until=rows_at_least(2)).wait()
        assert server.subscriptions == [EXCHANGES["binance"].subscription(["BTCUSDT"])]
    assert run.frame["side"].to_list() == ["", "buy"]  # "" is quarantined as bad_side, not written as unknown
    msg = json.loads(coinbase_trades([T("BTC-USD", 1), T("BTC-USD", 2)]))
    del msg["events"][0]["trades"][1]["side"]  # trade 1 (newest first)
    with coinbase_server([[json.dumps(msg)]]) as server:
        run = Run(EXCHANGES["coinbase"].open(server, symbols=["btc-usd"]), until=rows_at_least(2)).wait()
        assert server.subscriptions == [EXCHANGES["coinbase"].subscription(["BTC-USD"])]
    assert run.frame["side"].to_list() == ["", "buy"]
