"""The live Coinbase Advanced Trade `market_trades` channel (`--source coinbase`)."""

from __future__ import annotations

import re
from typing import Any

from rtml_cli.errors import ConfigError
from rtml_cli.sources.live import LiveSource, Send, Trade, dumps, text

DEFAULT_URL = "wss://advanced-trade-ws.coinbase.com"
_PRODUCT = re.compile(r"[A-Za-z0-9]+-[A-Za-z0-9]+")
# Coinbase's `side` is the maker's; the taker, whose side the ticks log holds, took the other.
# An unknown side is a null side (the contract's "unknown"); anything else is passed on, and
# validation quarantines it as bad_side.
_TAKER = {"BUY": "sell", "SELL": "buy", "UNKNOWN_ORDER_SIDE": None}


class CoinbaseSource(LiveSource):
    """`market_trades` for the products, then `heartbeats` (a message a second, which keeps a
    quiet product's connection open and shows it alive: 15 s of silence is a dead link).

    Coinbase acknowledges a subscription with the list of what it subscribed; a product
    missing from it is one it does not know. Its snapshot and its updates carry the newest
    trade first: trades are taken oldest first, so gaps and repeats are judged in id order.
    """

    name = "coinbase"
    default_url = DEFAULT_URL
    default_symbols = ("BTC-USD",)
    idle_default = 15.0

    def spelled(self, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not _PRODUCT.fullmatch(s)]
        if bad:
            raise ConfigError(f"{bad[0]!r} is not a Coinbase product id; Coinbase writes them like BTC-USD, ETH-EUR")
        return [s.upper() for s in symbols]

    def on_session(self) -> None:
        self._acknowledged = False

    def subscribe(self, send: Send) -> None:
        send({"type": "subscribe", "product_ids": self.symbols, "channel": "market_trades"})

    def handle(self, msg: Any, send: Send) -> list[Trade]:
        if not isinstance(msg, dict):
            return []
        if msg.get("type") == "error":
            reason = text(msg.get("message")) or "no reason given"
            if not self._acknowledged:  # the answer to the subscription: asking again gets the same
                self.refused(f"Coinbase refused the market_trades subscription for {', '.join(self.symbols)}: {reason}")
            raise ConnectionError(f"Coinbase sent an error: {reason}")  # mid-stream: reconnect
        events: list = msg["events"] if isinstance(msg.get("events"), list) else []
        channel = msg.get("channel")
        if channel == "subscriptions" and not self._acknowledged:
            # the answer to market_trades: the heartbeats subscription goes out only after it
            self._acknowledged = True
            got: set[str] = set()
            for event in events:
                subs = event.get("subscriptions") if isinstance(event, dict) else None
                trades = subs.get("market_trades") if isinstance(subs, dict) else None
                got |= {p for p in trades if isinstance(p, str)} if isinstance(trades, list) else set()
            missing = [s for s in self.symbols if s not in got]
            if missing:
                self.refused(
                    f"Coinbase did not subscribe to {', '.join(missing)}: not a product it lists? "
                    "Coinbase product ids are written like BTC-USD"
                )
            send({"type": "subscribe", "channel": "heartbeats"})
            self.subscribed()
            return []
        if channel != "market_trades":
            return []  # heartbeats: they only show that the connection is alive
        out = []
        for event in events:
            trades = event.get("trades") if isinstance(event, dict) else None
            for entry in trades if isinstance(trades, list) else []:
                trade = entry if isinstance(entry, dict) else {}  # anything else goes to quarantine
                side = text(trade.get("side")) or ""  # missing: quarantined as bad_side
                out.append(
                    Trade(
                        text(trade.get("product_id")),
                        _TAKER.get(side.upper(), side),
                        text(trade.get("price")),
                        text(trade.get("size")),
                        text(trade.get("trade_id")),
                        text(trade.get("time")),
                        dumps(entry),
                    )
                )
        return sorted(out, key=_id_order)


def _id_order(trade: Trade) -> tuple[str, int]:
    """Oldest first per product; a trade without an integer id keeps its place among equals."""
    tid = trade.trade_id
    return (trade.symbol or "", int(tid) if tid is not None and tid.isascii() and tid.isdigit() else -1)
