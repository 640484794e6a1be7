"""A local WebSocket server speaking Kraken's v2 trade protocol, scripted per connection.

Each connection gets the subscription acknowledgements, then plays its script: a message
(a dict, or a str sent verbatim so a test controls the exact decimal text), `HEARTBEAT`,
`DROP` (the TCP connection is cut without a close frame, as when a network dies), or a
float (sleep that long). After the script it sends a heartbeat every 0.1 s until the client
leaves or the server stops.
"""

from __future__ import annotations

import json
import socket
import threading
import time

from websockets.sync.server import ServerConnection, serve

DROP = "DROP"
HEARTBEAT = '{"channel":"heartbeat"}'


def trade_msg(kind: str, trades: list[dict]) -> dict:
    return {"channel": "trade", "type": kind, "data": trades}


def trade(tid: int, symbol: str = "BTC/USD", price: float | str = 65000.1, qty: float | str = 0.5,
          side: str = "buy", ts: str = "2026-11-26T12:00:00.000000Z") -> dict:
    return {"symbol": symbol, "side": side, "price": price, "qty": qty, "ord_type": "market",
            "trade_id": tid, "timestamp": ts}


class FakeKraken:
    def __init__(self, scripts: list[list], refuse: tuple[str, ...] = ()):
        self.scripts = scripts
        self.refuse = refuse
        self.subscriptions: list[dict] = []
        self.connections = 0
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stopped = threading.Event()

    def __enter__(self) -> FakeKraken:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._thread.join(5)

    def _handle(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        request = json.loads(ws.recv(timeout=5))
        self.subscriptions.append(request)
        for symbol in request["params"]["symbol"]:
            if symbol in self.refuse:
                ws.send(json.dumps({"method": "subscribe", "success": False, "symbol": symbol,
                                    "error": f"Currency pair not supported {symbol}"}))
            else:
                ws.send(json.dumps({"method": "subscribe", "success": True,
                                    "result": {"channel": "trade", "symbol": symbol, "snapshot": True}}))
        script = self.scripts[index] if index < len(self.scripts) else []
        for step in script:
            if step == DROP:
                ws.socket.shutdown(socket.SHUT_RDWR)
                ws.socket.close()
                return
            if isinstance(step, float):
                time.sleep(step)
            else:
                ws.send(step if isinstance(step, str) else json.dumps(step))
        try:
            while not self._stopped.is_set():
                ws.send(HEARTBEAT)
                time.sleep(0.1)
        except Exception:  # noqa: BLE001 - the client went away: this connection is done
            return
