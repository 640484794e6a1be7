"""Shared fixtures: a data directory per test, a CLI runner that runs the real commands, and a
small seeded market (its ticks, features and examples; and a model trained on them) built
once per test run and copied into each test's own data directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rtml_cli.cli import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def build(d: Path, *commands: list[str]) -> Path:
    """Run each `rtml` command on the data directory `d`, each of which must succeed."""
    for args in commands:
        r = CliRunner().invoke(cli, [*args, "--json", "--data-dir", str(d)])
        assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="session")
def _examples_once(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("examples") / "data", ["ingest", "--max-ticks", "120000"], ["features"])


@pytest.fixture(scope="session")
def _trained_once(tmp_path_factory, _examples_once) -> Path:
    d = tmp_path_factory.mktemp("trained") / "data"
    shutil.copytree(_examples_once, d)
    return build(d, ["train"])


@pytest.fixture
def examples_dir(_examples_once: Path, data_dir: Path) -> Path:
    """A data directory of 120,000 simulated trades (seed 42), their features and examples."""
    shutil.copytree(_examples_once, data_dir)
    return data_dir


@pytest.fixture
def trained_dir(_trained_once: Path, data_dir: Path) -> Path:
    """`examples_dir` with a `linear` model trained on all of it (checkpoint version 1)."""
    shutil.copytree(_trained_once, data_dir)
    return data_dir


@pytest.fixture
def rtml(data_dir: Path, monkeypatch):
    """Run `rtml ARGS --data-dir <tmp>` in-process; returns click's Result."""
    monkeypatch.delenv("RTML_DATA_DIR", raising=False)

    def run(*args: str, data: bool = True) -> Result:
        argv = list(args) + (["--data-dir", str(data_dir)] if data else [])
        return CliRunner().invoke(cli, argv, catch_exceptions=True)

    return run


def rtml_process(args: list[str], cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start the real `rtml` console entry point as a subprocess."""
    full_env = {**os.environ, **(env or {})}
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kw}
    return subprocess.Popen([sys.executable, "-m", "rtml_cli", *args], cwd=cwd, env=full_env, **kw)


def stop_processes(*procs: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM each (after SIGCONT, in case a test paused it) and wait for it to exit. One that
    does not exit in time has its threads' stacks dumped (SIGUSR1), is killed, and fails the
    test with what it printed."""
    for p in procs:
        p.send_signal(signal.SIGCONT)
        p.send_signal(signal.SIGTERM)
    stuck = []
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGUSR1)
            time.sleep(2)
            p.kill()
            p.wait()
            stuck.append(p)
    if stuck:

        def said(p: subprocess.Popen) -> str:
            err = p.stderr.read() if p.stderr and not p.stderr.closed else ""
            return f"{' '.join(map(str, p.args[3:]))}:\n{err[-6000:] if isinstance(err, str) else err}"

        raise AssertionError(f"did not stop within {timeout} s of SIGTERM:\n" + "\n".join(map(said, stuck)))


def assert_clean_error(result: Result, *fragments: str, code: int = 1) -> None:
    """An `Error: ...` message with the given fragments, the exit code, and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error:" in result.output
    for f in fragments:
        assert f in result.output, (f, result.output)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module of test models on sys.path: one that records what it saw, one that echoes a column."""
    (tmp_path / "bt_models.py").write_text(
        textwrap.dedent('''
        EVENTS = []

        class Recorder:
            def predict_one(self, x):
                EVENTS.append(("predict", id(self), int(x["i"])))
                return 0.0

            def learn_one(self, x, y):
                EVENTS.append(("learn", id(self), int(x["i"])))

        def recorder():
            return Recorder()

        class Echo:
            def predict_one(self, x):
                return x.get("signal", 0.0)

            def learn_one(self, x, y):
                pass

        def echo():
            return Echo()

        class Blowup:
            """Sane small predictions, then, after 120 examples learned, absurd ones."""

            def __init__(self):
                self.n = 0

            def predict_one(self, x):
                return 1e12 if self.n >= 120 else (0.0001 if self.n % 2 else -0.0001)

            def learn_one(self, x, y):
                self.n += 1

        def blowup():
            return Blowup()
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bt_models", None)
    import bt_models

    yield bt_models
    sys.modules.pop("bt_models", None)


def render_text(renderable, width: int = 80) -> str:
    """What a rich renderable shows on a terminal `width` columns wide, as plain text."""
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rendered rich table, each a list of its cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


class Terminal:
    """`rtml ARGS` on a pseudo-terminal `columns` wide, as a person runs it; what it shows is
    in `text` (escape sequences removed) and `raw`."""

    def __init__(self, args: list[str], columns: int = 80, env: dict | None = None):
        import fcntl
        import struct
        import termios
        import threading

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "50", **(env or {})}
        for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtml_cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self.master, self.chunks = master, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every end of the terminal is closed
                return
            if not data:
                return
            self.chunks.append(data)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(10)
            os.close(self.master)
        return code

    @property
    def raw(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    @property
    def text(self) -> str:
        import re

        return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07", "", self.raw)

    def lines(self) -> list[str]:
        return [line for chunk in self.text.split("\n") for line in chunk.split("\r")]


# -- Kafka -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker():
    """A real Kafka-protocol broker (Tansu, in memory) on loopback for the whole test run."""
    from tools.broker import Broker

    with Broker() as broker:
        yield broker


@pytest.fixture
def kafka_url(kafka_broker) -> str:
    """A `--log` URL on the session's broker with topics of this test's own (4 partitions each)."""
    import uuid

    return f"kafka://{kafka_broker.address}?prefix=t{uuid.uuid4().hex[:10]}.&partitions=4&timeout=10"
