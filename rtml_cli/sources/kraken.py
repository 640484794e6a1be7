"""The live Kraken WebSocket v2 trade feed as a tick source, with reconnects, replay de-duplication and gap reports."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from rtml_cli.errors import SourceError
from rtml_cli.schema import Field, ns_to_utc, parse_problems
from rtml_cli.sources import TickBatch

if TYPE_CHECKING:
    import polars as pl
    from websockets.sync.client import ClientConnection

DEFAULT_URL = "wss://ws.kraken.com/v2"
# Kraken sends a heartbeat every second once subscribed, so this much silence means a dead link.
IDLE_TIMEOUT = 15.0
POLL = 0.25  # the longest the source blocks without looking at `stop`
_FIELDS = ("symbol", "side", "price", "qty", "trade_id", "timestamp")
_UNSIGNED = re.compile(r"\d+")


class KrakenSource:
    """`rtml ingest --source kraken`: subscribe to the `trade` channel and yield what arrives.

    A batch goes out every `batch_interval` seconds, an empty one when nothing arrived, also
    while connecting or waiting to reconnect, so the caller's time-based flush and its
    `--duration` check keep running. A connection that says nothing, not even a heartbeat,
    for `idle_timeout` seconds is treated as dead and replaced.
    """

    name = "kraken"
    total = None  # unbounded

    def __init__(
        self,
        symbols: list[str],
        url: str = DEFAULT_URL,
        batch_interval: float = 0.25,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng_seed: int | None = None,
        connect_timeout: float = 10.0,
        on_event: Callable[[str], None] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ):
        self.symbols = list(symbols)
        self.url = url
        self.batch_interval = batch_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = random.Random(rng_seed)
        self.connect_timeout = connect_timeout
        self.on_event = on_event or (lambda message: None)
        self.idle_timeout = idle_timeout
        self.last_id: dict[str, int] = {}  # highest integer trade id seen, per symbol
        self.state = f"connecting to {url}"  # what the connection is doing, for a status line
        self.subscribed_once = False  # a run that never got a subscription through is an error
        self.last_problem: str | None = None
        self._failures = 0  # connection losses since the last successful subscription
        self._rows: list[tuple] = []
        self._gaps: list[str] = []
        self._next_batch = 0.0

    # -- the connection loop -----------------------------------------------------------------

    def batches(self, stop: threading.Event) -> Iterator[TickBatch]:
        from websockets.exceptions import InvalidURI, WebSocketException

        self._next_batch = time.monotonic() + self.batch_interval
        while not stop.is_set():
            connected = False
            try:
                ws = yield from self._connect(stop)
                if ws is None:
                    break  # stopped while connecting
                connected = True
                with ws:
                    yield from self._session(ws, stop)
                break  # a session only ends without an error when `stop` is set
            except InvalidURI as exc:
                raise SourceError(f"{self.url!r} is not a WebSocket URL ({exc}); use ws:// or wss://") from None
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = str(exc) or type(exc).__name__
            if stop.is_set():
                break
            # Full jitter, so that many clients cut off together do not come back together.
            ceiling = min(self.backoff_max, self.backoff_initial * 2 ** min(self._failures, 32))
            delay = self.rng.uniform(0, ceiling)
            self._failures += 1
            what = "disconnected from" if connected else "could not connect to"
            self.last_problem = f"{what} {self.url}: {reason}"
            self.state = f"retrying in {delay:.2g} s: {reason}"
            self.on_event(f"{what} {self.url}: {reason}; reconnecting in {delay:.2g} s")
            yield from self._pause(delay, stop)
        if self._rows or self._gaps:
            yield self._take_batch()

    def _connect(self, stop: threading.Event) -> Generator[TickBatch, None, ClientConnection | None]:
        """Open a connection, yielding batches on time meanwhile; None when `stop` came first."""
        self.state = f"connecting to {self.url}"
        dial = _Dial(self.url, self.connect_timeout)
        try:
            while not dial.done.wait(self._slice()):
                if stop.is_set():
                    return None
                yield from self._due_batch()
            return dial.take()
        finally:
            dial.abandon()

    def _session(self, ws: ClientConnection, stop: threading.Event) -> Iterator[TickBatch]:
        """Subscribe and gather trades until `stop`; a lost connection surfaces as an exception."""
        subscribe = {"method": "subscribe", "params": {"channel": "trade", "symbol": self.symbols, "snapshot": True}}
        ws.send(json.dumps(subscribe))
        heard = time.monotonic()
        while not stop.is_set():
            try:
                message = ws.recv(timeout=self._slice())
            except TimeoutError:
                if time.monotonic() - heard > self.idle_timeout:
                    raise TimeoutError(f"nothing received for {self.idle_timeout:g} s") from None
            else:
                heard = time.monotonic()
                self._handle(message, time.time_ns())
            yield from self._due_batch()

    def _pause(self, seconds: float, stop: threading.Event) -> Iterator[TickBatch]:
        end = time.monotonic() + seconds
        while not stop.is_set() and (left := end - time.monotonic()) > 0:
            stop.wait(min(left, self._slice()))
            yield from self._due_batch()

    def _slice(self) -> float:
        """How long to block: until the next batch is due, and never longer than POLL."""
        return max(0.0, min(POLL, self._next_batch - time.monotonic()))

    def _due_batch(self) -> Iterator[TickBatch]:
        if time.monotonic() >= self._next_batch:
            yield self._take_batch()
            # Counted from when the caller is done, so a slow consumer gets fuller batches, not more.
            self._next_batch = time.monotonic() + self.batch_interval

    # -- messages ----------------------------------------------------------------------------

    def _handle(self, message: str | bytes, recv_ns: int) -> None:
        try:
            # Numbers stay text: the float is made once, by polars, from Kraken's own decimal.
            msg = json.loads(message, parse_float=_Number, parse_int=_Number)
        except ValueError:
            self.on_event(f"ignored a message from {self.url} that is not JSON: {str(message)[:80]!r}")
            return
        if not isinstance(msg, dict):
            return
        if msg.get("success") is False or msg.get("method") == "error":
            self._refused(msg)
        if msg.get("method") == "subscribe" and msg.get("success") is True:
            if self._failures:
                self.on_event(f"reconnected to {self.url}")
            self._failures = 0
            self.subscribed_once = True
            self.state = "subscribed"
            return
        if msg.get("channel") != "trade" or msg.get("type") not in ("snapshot", "update"):
            return  # heartbeats, status: they only show that the connection is alive
        data = msg.get("data")
        for entry in data if isinstance(data, list) else []:
            trade = entry if isinstance(entry, dict) else {}  # anything else goes to quarantine
            if self._is_new(trade):
                self._rows.append((*(_text(trade.get(k)) for k in _FIELDS), recv_ns, _dumps(entry)))

    def _refused(self, msg: dict) -> NoReturn:
        error = _text(msg.get("error")) or "no reason given"
        result = msg["result"] if isinstance(msg.get("result"), dict) else {}
        symbol = msg.get("symbol") or result.get("symbol")
        # Retrying cannot help: the same request would be refused again.
        if symbol:
            raise SourceError(
                f"Kraken refused the subscription for {_text(symbol)}: {error}; "
                "check the symbol names (Kraken v2 uses BTC/USD style)"
            )
        raise SourceError(f"Kraken refused the trade subscription for {', '.join(self.symbols)}: {error}")

    def _is_new(self, trade: dict) -> bool:
        """False for a trade seen before (a snapshot after a reconnect repeats recent ones); notes id gaps."""
        symbol, raw_id = trade.get("symbol"), trade.get("trade_id")
        if not isinstance(symbol, str) or not isinstance(raw_id, str) or not _UNSIGNED.fullmatch(raw_id):
            return True  # no integer id to order by: validation and de-duplication downstream decide
        tid = int(raw_id)
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
        schema = dict.fromkeys(_FIELDS, pl.String) | {"recv_ns": pl.Int64, "_raw": pl.String}
        frame = _parse(pl.DataFrame(rows, schema=schema, orient="row"))
        return TickBatch(frame, raw=pl.col("_raw"), where=pl.lit(f"kraken {self.url}"), progress=0, gaps=gaps)


def _parse(raw: pl.DataFrame) -> pl.DataFrame:
    """The text columns of the trades -> the tick columns, `_parse_problem` and `_raw`."""
    import polars as pl

    # RFC 3339; `%#z` takes both "Z" and "+01:00".
    ts = pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="ns", time_zone="UTC", strict=False)
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
        pl.col("side"),  # as given: validation reports anything but buy/sell as bad_side
        pl.col("trade_id"),
        parse_problems(fields).alias("_parse_problem"),
        pl.col("_raw"),
    )


class _Number(str):
    """A JSON number kept as its exact text (a str, so polars parses it like any text)."""


def _text(value: Any) -> str | None:
    """A field's value as text: strings and numbers verbatim, anything else as its JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    return _dumps(value)


def _dumps(value: Any) -> str:
    """JSON text of a parsed value with every number written back exactly as it arrived."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


class _Dial:
    """One connection attempt in a helper thread, so a hanging handshake cannot hold up `stop`.

    A connection that completes after `abandon` is closed at once instead of leaking.
    """

    def __init__(self, url: str, timeout: float):
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._ws: ClientConnection | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, args=(url, timeout), name="kraken-connect", daemon=True).start()

    def _run(self, url: str, timeout: float) -> None:
        from websockets.sync.client import connect

        try:
            ws = connect(url, open_timeout=timeout, close_timeout=POLL)
        except Exception as exc:
            self._error = exc
        else:
            with self._lock:
                keep = not self._abandoned
                if keep:
                    self._ws = ws
            if not keep:
                ws.close()
        finally:
            self.done.set()

    def take(self) -> ClientConnection:
        """The open connection (the caller now owns it), or the reason there is none."""
        if self._error is not None:
            raise self._error
        with self._lock:
            ws, self._ws = self._ws, None
        assert ws is not None
        return ws

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()
