"""A live exchange trade feed over a public WebSocket: what every exchange's feed shares.

Connect, subscribe, gather trades into batches on a clock; reconnect with exponential
backoff and full jitter, resubscribe, drop what a reconnect re-sends, report gaps in the
trade ids; keep every number as the exchange's decimal text until polars parses it once.
An exchange's module says only how to subscribe and what its messages mean.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, NoReturn

from rtml_cli.errors import SourceError
from rtml_cli.schema import Field, ms_or_us_to_ns, ns_to_utc, parse_problems
from rtml_cli.sources import TickBatch

if TYPE_CHECKING:
    import polars as pl
    from websockets.sync.client import ClientConnection

POLL = 0.25  # the longest the source blocks without looking at `stop`
_UNSIGNED = re.compile(r"\d+")


class Trade(NamedTuple):
    """One trade as the exchange sent it: text fields (None when missing), the taker side as
    'buy'/'sell' (None when the exchange says it is unknown; anything else, "" for a missing
    one, is passed on for validation to report as bad_side), the message it came in."""

    symbol: str | None
    side: str | None
    price: str | None
    qty: str | None
    trade_id: str | None
    time: str | None  # RFC 3339 text, or integer epoch text (see LiveSource.epoch_time)
    raw: str
    problem: str | None = None  # a reason to quarantine it the exchange's fields give


Send = Callable[[dict], None]


class LiveSource:
    """`rtml ingest --source <exchange>`: subscribe to public trades and yield what arrives.

    A batch goes out every `batch_interval` seconds, an empty one when nothing arrived, also
    while connecting or waiting to reconnect, so the caller's time-based flush and its
    `--duration` check keep running. A connection that says nothing for `idle_timeout` seconds
    (for an exchange that sends heartbeats) is treated as dead and replaced; otherwise the
    WebSocket pings find a dead link.
    """

    name: ClassVar[str]
    default_url: ClassVar[str]
    default_symbols: ClassVar[tuple[str, ...]]
    idle_default: ClassVar[float | None] = None  # seconds of silence that mean a dead link
    epoch_time: ClassVar[bool] = False  # times are integer ms (or µs) since the epoch, not RFC 3339
    total = None  # unbounded

    def __init__(
        self,
        symbols: list[str] | None = None,
        url: str | None = None,
        batch_interval: float = 0.25,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng_seed: int | None = None,
        connect_timeout: float = 10.0,
        on_event: Callable[[str], None] | None = None,
        idle_timeout: float | None = None,
    ):
        self.symbols = self.spelled(list(symbols or self.default_symbols))
        self.url = url or self.default_url
        self.batch_interval = batch_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = random.Random(rng_seed)
        self.connect_timeout = connect_timeout
        self.on_event = on_event or (lambda message: None)
        self.idle_timeout = idle_timeout if idle_timeout is not None else self.idle_default
        self.last_id: dict[str, int] = {}  # highest integer trade id seen, per symbol
        self.state = f"connecting to {self.url}"  # what the connection is doing, for a status line
        self.subscribed_once = False  # a run that never got a subscription through is an error
        self.last_problem: str | None = None
        self._failures = 0  # connection losses since the last successful subscription
        self._rows: list[tuple] = []
        self._gaps: list[str] = []
        self._next_batch = 0.0

    # -- what an exchange's module says --------------------------------------------------------

    def spelled(self, symbols: list[str]) -> list[str]:
        """The symbols as the exchange writes them; a clear error, before connecting, for one
        written another exchange's way."""
        return symbols

    def subscribe(self, send: Send) -> None:
        raise NotImplementedError

    def handle(self, msg: Any, send: Send) -> list[Trade]:
        """The trades in one parsed message (numbers as `Number` text). Acknowledgements call
        `subscribed()`, refusals `refused()`; anything else (heartbeats, status) returns []."""
        raise NotImplementedError

    def on_session(self) -> None:
        """A new connection is about to subscribe."""

    def subscribed(self) -> None:
        if self._failures:
            self.on_event(f"reconnected to {self.url}")
        self._failures = 0
        self.subscribed_once = True
        self.state = "subscribed"

    def refused(self, what: str) -> NoReturn:
        """The exchange refused the subscription: retrying would be refused again."""
        raise SourceError(what)

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
        dial = _Dial(self.url, self.connect_timeout, self.name)
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

        def send(message: dict) -> None:
            ws.send(json.dumps(message))

        self.state = "subscribing"
        self.on_session()
        self.subscribe(send)
        heard = time.monotonic()
        while not stop.is_set():
            try:
                message = ws.recv(timeout=self._slice())
            except TimeoutError:
                if self.idle_timeout is not None and time.monotonic() - heard > self.idle_timeout:
                    raise TimeoutError(f"nothing received for {self.idle_timeout:g} s") from None
            else:
                heard = time.monotonic()
                self._handle(message, time.time_ns(), send)
            self.tick()
            yield from self._due_batch()

    def tick(self) -> None:
        """Called between messages, about every POLL seconds at most apart."""

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

    def _handle(self, message: str | bytes, recv_ns: int, send: Send) -> None:
        try:
            # Numbers stay text: the float is made once, by polars, from the exchange's own decimal.
            msg = json.loads(message, parse_float=Number, parse_int=Number)
        except ValueError:
            self.on_event(f"ignored a message from {self.url} that is not JSON: {str(message)[:80]!r}")
            return
        for trade in self.handle(msg, send):
            if self._is_new(trade.symbol, trade.trade_id):
                self._rows.append((*trade[:6], recv_ns, trade.raw, trade.problem))

    def _is_new(self, symbol: str | None, raw_id: str | None) -> bool:
        """False for a trade seen before (a snapshot after a reconnect repeats recent ones); notes id gaps."""
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
        text = ("symbol", "side", "price", "qty", "trade_id", "time")
        schema = dict.fromkeys(text, pl.String) | {"recv_ns": pl.Int64, "_raw": pl.String, "problem": pl.String}
        frame = _parse(pl.DataFrame(rows, schema=schema, orient="row"), self.epoch_time)
        return TickBatch(frame, raw=pl.col("_raw"), where=pl.lit(f"{self.name} {self.url}"), progress=0, gaps=gaps)


def _parse(raw: pl.DataFrame, epoch_time: bool) -> pl.DataFrame:
    """The text columns of the trades -> the tick columns, `_parse_problem` and `_raw`."""
    import polars as pl

    if epoch_time:
        # milliseconds, or microseconds (Binance's timeUnit=MICROSECOND)
        ts = ns_to_utc(ms_or_us_to_ns(pl.col("time").cast(pl.Int64, strict=False)))
    else:
        # RFC 3339; `%#z` takes both "Z" and "+01:00".
        ts = pl.col("time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="ns", time_zone="UTC", strict=False)
    price = pl.col("price").cast(pl.Float64, strict=False)
    qty = pl.col("qty").cast(pl.Float64, strict=False)
    fields = [
        Field("ts", pl.col("time"), ts, "ts"),
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
        pl.coalesce(parse_problems(fields), pl.col("problem")).alias("_parse_problem"),
        pl.col("_raw"),
    )


class Number(str):
    """A JSON number kept as its exact text (a str, so polars parses it like any text)."""


def text(value: Any) -> str | None:
    """A field's value as text: strings and numbers verbatim, anything else as its JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    return dumps(value)


def dumps(value: Any) -> str:
    """JSON text of a parsed value with every number written back exactly as it arrived."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


class _Dial:
    """One connection attempt in a helper thread, so a hanging handshake cannot hold up `stop`.

    A connection that completes after `abandon` is closed at once instead of leaking.
    """

    def __init__(self, url: str, timeout: float, name: str):
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._ws: ClientConnection | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, args=(url, timeout), name=f"{name}-connect", daemon=True).start()

    def _run(self, url: str, timeout: float) -> None:
        from websockets.sync.client import connect

        try:
            ws = connect(url, open_timeout=timeout, close_timeout=POLL, max_size=16 << 20)
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
