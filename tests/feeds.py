"""Stand-in exchanges for the live feed tests: a real local WebSocket server that speaks an
exchange's documented messages from a script, and a runner that drains a source in a thread."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable

import polars as pl
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from rtml_cli.sources import TickBatch

DROP = "DROP"  # script step: cut the TCP connection, no close frame (a reset, as when a link dies)


class FakeFeed:
    """A WebSocket server playing one script per connection, in the order clients connect.

    On connect it sends `greeting`; every request the client sends is recorded and answered
    with `answer(request)` (a list of messages). A script step is a message (a dict, or a str
    sent verbatim so a test controls the exact decimal text), `DROP`, or a float: silence for
    that many seconds. After its script a connection gets `heartbeat` every 0.1 s (when there
    is one) until the client leaves.
    """

    def __init__(
        self,
        scripts: list[list],
        answer: Callable[[dict], list[str]],
        greeting: tuple[str, ...] = (),
        heartbeat: str | None = None,
    ):
        self.scripts = scripts
        self.answer = answer
        self.greeting = greeting
        self.heartbeat = heartbeat
        self.requests: list[list[dict]] = []  # per connection, what the client sent
        self.connections = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._thread.join(5)

    @property
    def subscriptions(self) -> list[dict]:
        """The first request of every connection."""
        return [r[0] for r in self.requests if r]

    def _handle(self, ws: ServerConnection) -> None:
        with self._lock:
            index = self.connections
            self.connections += 1
            self.requests.append([])
        got = self.requests[index]

        def serve_requests(wait: float) -> None:
            try:
                while True:
                    request = json.loads(ws.recv(timeout=wait))
                    got.append(request)
                    for reply in self.answer(request):
                        ws.send(reply)
                    wait = 0
            except TimeoutError:
                return

        try:
            for message in self.greeting:
                ws.send(message)
            serve_requests(5)  # the subscription
            for step in self.scripts[index] if index < len(self.scripts) else []:
                serve_requests(0)  # and any that follow it
                if step == DROP:
                    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    ws.socket.close()
                    return
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    ws.send(step if isinstance(step, str) else json.dumps(step))
            while not self._stopped.is_set():
                if self.heartbeat is not None:
                    ws.send(self.heartbeat)
                serve_requests(0.1)
        except (ConnectionClosed, OSError):
            return  # the client went away: this connection is done


class Run:
    """`src.batches(stop)` drained in a thread, so a hung source fails its test instead of the suite."""

    def __init__(self, src, until=lambda batches: False):
        self.stop = threading.Event()
        self.batches: list[TickBatch] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()

        def drain() -> None:
            try:
                for batch in src.batches(self.stop):
                    self.batches.append(batch)
                    if until(self.batches):
                        self.stop.set()
            except BaseException as exc:
                self.error = exc
            finally:
                self.finished.set()

        threading.Thread(target=drain, daemon=True).start()

    def wait(self, timeout: float = 5.0) -> Run:
        if not self.finished.wait(timeout):
            self.stop.set()
            pytest.fail(f"the source did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self

    @property
    def frame(self) -> pl.DataFrame:
        return pl.concat([b.frame for b in self.batches])

    @property
    def gaps(self) -> list[str]:
        return [g for b in self.batches for g in b.gaps]


def rows_at_least(n: int):
    return lambda batches: sum(b.frame.height for b in batches) >= n


def delays(events: list[str]) -> list[str]:
    return [m.group(1) for e in events if (m := re.search(r"reconnecting in (\S+) s$", e))]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
