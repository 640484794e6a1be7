"""Terminal output: progress bars, status lines and summary tables (rich, on stderr)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from rtml_cli.ingest import IngestSummary


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(console: Console, unit: str) -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        amount,
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class StatusLine:
    """A line printed every `every` seconds for unbounded runs: rate, last prices, lag."""

    def __init__(self, console: Console, every: float = 2.0):
        self.console = console
        self.every = every
        self._last = time.monotonic()
        self._last_written = 0

    def update(self, summary: IngestSummary) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        rate = (summary.written - self._last_written) / (now - self._last)
        self._last, self._last_written = now, summary.written
        self.console.print(ingest_status(summary, rate), highlight=False)


def ingest_status(summary: IngestSummary, rate: float) -> str:
    wall = datetime.now(timezone.utc)
    prices = [f"{sym} {st.last_price:g}" for sym, st in sorted(summary.symbols.items())]
    newest = max((st.last_ts for st in summary.symbols.values() if st.last_ts), default=None)
    if newest is None:
        clock = "waiting for trades"
    elif newest <= wall:  # a real feed: how far the log is behind the wall clock
        clock = f"lag {(wall - newest).total_seconds():.1f}s"
    else:  # a simulated clock running ahead of the wall clock (--speed > 1)
        clock = f"market time {newest:%Y-%m-%d %H:%M:%S}"
    bad = sum(summary.quarantined.values())
    return (
        f"{wall.astimezone():%H:%M:%S} {summary.written:,} ticks ({rate:,.0f}/s)"
        f"{f', {bad:,} quarantined' if bad else ''}, {clock}  " + "  ".join(prices)
    )


def ingest_table(summary: IngestSummary):
    from rich.table import Table

    table = Table(title=f"rtml ingest: {summary.source} ({summary.stopped_by})", title_justify="left")
    table.add_column("symbol")
    table.add_column("written", justify="right")
    table.add_column("first ts")
    table.add_column("last ts")
    table.add_column("last price", justify="right")
    table.add_column("last offset", justify="right")
    for sym, st in sorted(summary.symbols.items()):
        table.add_row(
            sym,
            f"{st.written:,}",
            _ts(st.first_ts),
            _ts(st.last_ts),
            f"{st.last_price:g}" if st.last_price is not None else "",
            str(st.last_offset),
        )
    table.caption = (
        f"{summary.written:,} ticks written in {summary.elapsed:.2f}s ({summary.rate:,.0f}/s), "
        f"{summary.parts} parts, {summary.flushes} flushes"
    )
    return table


def quarantine_table(summary: IngestSummary):
    from rich.table import Table

    table = Table(title="quarantined (not written)", title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for reason, n in sorted(summary.quarantined.items()):
        table.add_row(reason, f"{n:,}")
    return table


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""
