"""The live Kraken WebSocket v2 trade feed (`--source kraken`)."""

from __future__ import annotations

from typing import Any

from rtml_cli.errors import ConfigError
from rtml_cli.sources.live import LiveSource, Send, Trade, dumps, text

DEFAULT_URL = "wss://ws.kraken.com/v2"
_FIELDS = ("symbol", "side", "price", "qty", "trade_id", "timestamp")


class KrakenSource(LiveSource):
    """The `trade` channel, with a snapshot of recent trades on every (re)subscription.

    Kraken sends a heartbeat every second once subscribed, so 15 s of silence is a dead link.
    """

    name = "kraken"
    default_url = DEFAULT_URL
    default_symbols = ("BTC/USD",)
    idle_default = 15.0

    def spelled(self, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if "/" not in s]
        if bad:
            raise ConfigError(f"{bad[0]!r} is not a Kraken v2 pair; Kraken writes them like BTC/USD, ETH/EUR")
        return symbols

    def subscribe(self, send: Send) -> None:
        send({"method": "subscribe", "params": {"channel": "trade", "symbol": self.symbols, "snapshot": True}})

    def handle(self, msg: Any, send: Send) -> list[Trade]:
        if not isinstance(msg, dict):
            return []
        if msg.get("success") is False or msg.get("method") == "error":
            error = text(msg.get("error")) or "no reason given"
            result = msg["result"] if isinstance(msg.get("result"), dict) else {}
            symbol = msg.get("symbol") or result.get("symbol")
            if symbol:
                self.refused(
                    f"Kraken refused the subscription for {text(symbol)}: {error}; "
                    "check the symbol names (Kraken v2 uses BTC/USD style)"
                )
            self.refused(f"Kraken refused the trade subscription for {', '.join(self.symbols)}: {error}")
        if msg.get("method") == "subscribe" and msg.get("success") is True:
            self.subscribed()
            return []
        if msg.get("channel") != "trade" or msg.get("type") not in ("snapshot", "update"):
            return []  # heartbeats, status: they only show that the connection is alive
        data = msg.get("data")
        trades = []
        for entry in data if isinstance(data, list) else []:
            trade = entry if isinstance(entry, dict) else {}  # anything else goes to quarantine
            symbol, side, price, qty, trade_id, timestamp = (text(trade.get(k)) for k in _FIELDS)
            side = "" if side is None else side  # missing: quarantined as bad_side
            trades.append(Trade(symbol, side, price, qty, trade_id, timestamp, dumps(entry)))
        return trades
