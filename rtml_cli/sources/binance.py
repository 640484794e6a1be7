"""The live Binance `<symbol>@trade` streams, spot (`--source binance`) and USD-M futures
(`--source binance-futures`)."""

from __future__ import annotations

import re
import time
from typing import Any

from rtml_cli.errors import ConfigError
from rtml_cli.sources.live import LiveSource, Send, Trade, dumps, text

SPOT_URL = "wss://stream.binance.com:9443/ws"
# Since Binance split its futures WebSocket routes in 2026, the trade stream is served under /public.
FUTURES_URL = "wss://fstream.binance.com/public/ws"
QUIET_WARNING = 120.0  # seconds without a trade of a subscribed symbol before saying so, once
_SYMBOL = re.compile(r"[A-Za-z0-9_]+")
_REQUEST_ID = 1


class BinanceSource(LiveSource):
    """Spot trades: one SUBSCRIBE for every symbol's `<symbol>@trade` stream.

    Binance sends no heartbeat messages (it pings at the WebSocket level, and the client's own
    pings find a dead link), and it acknowledges a stream of a symbol it does not list like any
    other, then sends nothing: a symbol without a trade for QUIET_WARNING seconds is reported.
    """

    name = "binance"
    default_url = SPOT_URL
    default_symbols = ("BTCUSDT",)
    epoch_time = True
    quiet_warning = QUIET_WARNING

    def spelled(self, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not _SYMBOL.fullmatch(s)]
        if bad:
            raise ConfigError(
                f"{bad[0]!r} is not a Binance symbol; Binance writes them without a separator, like BTCUSDT"
            )
        return [s.upper() for s in symbols]  # as its events name them (stream names are lower case)

    def on_session(self) -> None:
        self._since = time.monotonic()
        self._heard: set[str] = set()
        self._warned: set[str] = set()

    def subscribe(self, send: Send) -> None:
        send({"method": "SUBSCRIBE", "params": [f"{s.lower()}@trade" for s in self.symbols], "id": _REQUEST_ID})

    def handle(self, msg: Any, send: Send) -> list[Trade]:
        if isinstance(msg, dict) and isinstance(msg.get("data"), dict) and "stream" in msg:
            msg = msg["data"]  # a combined stream (a --url ending in /stream) wraps each event
        if not isinstance(msg, dict):
            return []
        error = msg.get("error") if isinstance(msg.get("error"), dict) else msg if "code" in msg else None
        if error is not None:
            self.refused(
                f"Binance refused the subscription to {', '.join(self.symbols)}: {text(error.get('msg'))} "
                f"(code {text(error.get('code'))}); Binance symbols are written like BTCUSDT"
            )
        if "result" in msg and text(msg.get("id")) == str(_REQUEST_ID):
            self.subscribed()
            return []
        if msg.get("e") == "serverShutdown":
            self.on_event(f"{self.url} is shutting down; rtml reconnects when it closes")
        if msg.get("e") != "trade":
            return []
        symbol = text(msg.get("s"))
        if symbol is not None:
            self._heard.add(symbol)
        maker = msg.get("m")  # the buyer was the maker: the taker sold
        side = "sell" if maker is True else "buy" if maker is False else text(maker) or ""  # else bad_side
        kind = msg.get("X")  # futures only: MARKET, or a fill that was not a market trade
        problem = None if kind is None or kind == "MARKET" else "not_market_trade"
        return [
            Trade(
                symbol,
                side,
                text(msg.get("p")),
                text(msg.get("q")),
                text(msg.get("t")),
                text(msg.get("T")),
                dumps(msg),
                problem,
            )
        ]

    def tick(self) -> None:
        if self.state != "subscribed" or time.monotonic() - self._since < self.quiet_warning:
            return
        for symbol in self.symbols:
            if symbol not in self._heard and symbol not in self._warned:
                self._warned.add(symbol)
                self.on_event(
                    f"no {symbol} trade in {self.quiet_warning:g} s since subscribing; Binance accepts a symbol "
                    "it does not list without an error: check the spelling (e.g. BTCUSDT), and for futures the market"
                )


class BinanceFuturesSource(BinanceSource):
    """USD-M futures trades. Their events say what kind of fill each is (`X`): only MARKET
    trades are trades in the market; insurance-fund and auto-deleveraging fills are
    quarantined as `not_market_trade`."""

    name = "binance-futures"
    default_url = FUTURES_URL
