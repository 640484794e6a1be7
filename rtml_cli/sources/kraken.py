"""The live Kraken WebSocket v2 trade feed as a tick source, with reconnects and gap detection."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from threading import Event
from typing import TYPE_CHECKING

from rtml_cli.errors import SourceError
from rtml_cli.schema import Field, parse_problems
from rtml_cli.sources import TickBatch

if TYPE_CHECKING:
    import polars as pl

DEFAULT_URL = "wss://ws.kraken.com/v2"
_FIELDS = ("symbol", "side", "price", "qty", "trade_id", "timestamp")


class KrakenSource:
    """`rtml ingest --source kraken`: subscribe to the `trade` channel and yield what arrives.

    Batches go out every `batch_interval` seconds, empty ones included, so the caller's
    time-based flush and status line keep running while the market is quiet. A connection
    that says nothing (not even a heartbeat, which Kraken sends every second) for
    `idle_timeout` seconds is treated as dead.
    """

    name = "kraken"
    total = None

    def __init__(
        self,
        symbols: list[str],
        url: str = DEFAULT_URL,
        batch_interval: float = 0.25,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        idle_timeout: float = 15.0,
        rng_seed: int | None = None,
        on_event: Callable[[str], None] | None = None,
    ):
        self.symbols = symbols
        self.url = url
        self.batch_interval = batch_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_timeout = idle_timeout
        self.rng = random.Random(rng_seed)
        self.on_event = on_event or (lambda msg: None)
        self.last_id: dict[str, int] = {}  # highest integer trade id seen per symbol
        self.connections = 0
        self._rows: list[tuple] = []
        self._gaps: list[str] = []

    # -- the connection loop -----------------------------------------------------------------

    def batches(self, stop: Event) -> Iterator[TickBatch]:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        failures = 0
        while not stop.is_set():
            try:
                with connect(self.url, open_timeout=10, close_timeout=1, max_size=2**24) as ws:
                    self.connections += 1
                    ws.send(json.dumps({
                        "method": "subscribe",
                        "params": {"channel": "trade", "symbol": self.symbols, "snapshot": True},
                    }))
                    last_message = last_batch = time.monotonic()
                    while not stop.is_set():
                        try:
                            message = ws.recv(timeout=min(0.1, self.batch_interval))
                        except TimeoutError:
                            message = None
                        now = time.monotonic()
                        if message is not None:
                            last_message = now
                            if self._handle(message):
                                failures = 0  # a successful subscription resets the backoff
                        elif now - last_message > self.idle_timeout:
                            raise TimeoutError(f"no message for {self.idle_timeout:g} s")
                        if now - last_batch >= self.batch_interval:
                            last_batch = now
                            yield self._take_batch()
            except (OSError, TimeoutError, WebSocketException) as exc:
                if self._rows:  # what arrived before the drop is kept
                    yield self._take_batch()
                if stop.is_set():
                    break
                delay = self.rng.uniform(0, min(self.backoff_max, self.backoff_initial * 2**failures))
                failures += 1
                self.on_event(f"disconnected from {self.url}: {exc or type(exc).__name__}; reconnecting in {delay:.1f} s")
                stop.wait(delay)
        if self._rows:
            yield self._take_batch()

    def _handle(self, message: str | bytes) -> bool:
        """Take one message; returns True for a successful subscription acknowledgement."""
        try:
            msg = json.loads(message, parse_float=str, parse_int=str)
        except ValueError:
            self.on_event(f"ignored a message that is not JSON: {str(message)[:80]!r}")
            return False
        if not isinstance(msg, dict):
            return False
        if msg.get("method") == "subscribe":
            if msg.get("success") is True:
                return True
            result = msg.get("result") if isinstance(msg.get("result"), dict) else {}
            symbol = msg.get("symbol") or result.get("symbol") or ",".join(self.symbols)
            raise SourceError(
                f"Kraken refused the subscription for {symbol}: {msg.get('error', 'no reason given')}; "
                "check the symbol names (Kraken v2 uses BTC/USD style)"
            )
        if msg.get("channel") != "trade" or msg.get("type") not in ("snapshot", "update"):
            return False  # heartbeats, status messages
        recv_ns = time.time_ns()
        for trade in msg.get("data") or []:
            if isinstance(trade, dict) and self._is_new(trade):
                values = tuple(None if trade.get(k) is None else str(trade[k]) for k in _FIELDS)
                self._rows.append((*values, recv_ns, json.dumps(trade, separators=(",", ":"))))
        return False

    def _is_new(self, trade: dict) -> bool:
        """Drop trades a snapshot repeats after a reconnect; note gaps in the id sequence."""
        symbol, raw_id = trade.get("symbol"), trade.get("trade_id")
        try:
            tid = int(raw_id)
        except (TypeError, ValueError):
            return True  # not an integer id: keep it, validation and de-duplication decide
        last = self.last_id.get(symbol)
        if last is not None and tid <= last:
            return False
        if last is not None and tid > last + 1:
            gap = f"{symbol}: trade_id gap {last + 1}..{tid - 1} ({tid - last - 1} missing)"
            self._gaps.append(gap)
            self.on_event(gap)
        self.last_id[symbol] = tid
        return True

    # -- turning rows into a batch -----------------------------------------------------------

    def _take_batch(self) -> TickBatch:
        import polars as pl

        rows, gaps = self._rows, self._gaps
        self._rows, self._gaps = [], []
        names = [*_FIELDS, "recv_ns", "_raw"]
        schema = {n: pl.String for n in names} | {"recv_ns": pl.Int64}
        raw = pl.DataFrame(rows, schema=schema, orient="row")
        return TickBatch(
            _parse(raw), raw=pl.col("_raw"), where=pl.lit(f"kraken {self.url}"), progress=0, gaps=gaps
        )


def _parse(raw: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    from rtml_cli.schema import ns_to_utc

    ts = (
        pl.col("timestamp")
        .str.replace(r"Z$", "")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="ns", strict=False)
        .dt.replace_time_zone("UTC")
    )
    # The float is made once, from the exchange's decimal text: the nearest double to it.
    price = pl.col("price").cast(pl.Float64, strict=False)
    qty = pl.col("qty").cast(pl.Float64, strict=False)
    fields = [
        Field("ts", pl.col("timestamp"), ts, "ts"),
        Field("price", pl.col("price"), price, "price"),
        Field("qty", pl.col("qty"), qty, "qty"),
        Field("trade_id", pl.col("trade_id"), pl.col("trade_id"), "trade_id"),
    ]
    return raw.select(
        ts.alias("ts"),
        ns_to_utc(pl.col("recv_ns")).alias("recv_ts"),
        pl.col("symbol"),
        price.alias("price"),
        qty.alias("qty"),
        pl.col("side").str.to_lowercase().alias("side"),
        pl.col("trade_id"),
        parse_problems(fields).alias("_parse_problem"),
        pl.col("_raw"),
    )
