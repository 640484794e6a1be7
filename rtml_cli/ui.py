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
    elif summary.source == "kraken":  # a real feed: how far the log is behind the wall clock
        clock = f"lag {(wall - newest).total_seconds():.1f}s"
    else:  # a simulated or replayed clock, ahead of or behind the wall clock
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


def build_features(builder, console: Console, as_json: bool) -> dict:
    """One-shot build with a progress bar over the ticks backlog."""
    from rtml_cli.features import StepReport, summarize

    started = time.monotonic()
    total = StepReport()
    backlog = builder.backlog()
    if as_json or backlog == 0:
        total = builder.build()
    else:
        with progress_bar(console, "ticks") as bar:
            task = bar.add_task("features", total=backlog, status="")

            def on_step(rep):
                total.add(rep)
                bar.update(task, advance=rep.ticks, status=f"{total.bars:,} bars, {total.examples:,} examples")

            builder.build(on_step)
    return summarize(builder, total, time.monotonic() - started)


def follow_features(builder, stop, poll: float, grace: float, console: Console, as_json: bool) -> dict:
    """--follow: build as ticks arrive; a status line every 2 s unless --json."""
    from rtml_cli.features import StepReport, summarize

    started = last_print = time.monotonic()
    total = StepReport()
    for rep in builder.follow(stop, poll, grace):
        total.add(rep)
        now = time.monotonic()
        if not as_json and now - last_print >= 2.0:
            last_print = now
            console.print(features_status(builder, total), highlight=False)
    return summarize(builder, total, time.monotonic() - started)


def features_status(builder, total) -> str:
    from rtml_cli.features import NS

    backlog = builder.backlog()
    lags = []
    for sym, st in sorted(builder.state.items()):
        if st.max_ts is not None and st.closed_until is not None:
            lags.append(f"{sym} {(st.max_ts - st.closed_until) / NS:.0f}s")
    return (
        f"{datetime.now().strftime('%H:%M:%S')} {total.bars:,} bars, {total.examples:,} examples, "
        f"{total.late:,} late ticks, {backlog:,} ticks behind; open bar age: " + ", ".join(lags)
    )


def features_table(summary: dict):
    from rich.table import Table

    p = summary["params"]
    table = Table(
        title=f"rtml features: {p['bar_s']}s bars, horizon {p['horizon']}, target {p['target']}",
        title_justify="left",
    )
    for col in ("symbol", "new bars", "new examples", "late ticks", "features rows", "examples rows", "closed until"):
        table.add_column(col, justify="left" if col in ("symbol", "closed until") else "right")
    for sym, s in summary["symbols"].items():
        table.add_row(
            sym, f"{s['bars_emitted']:,}", f"{s['examples_emitted']:,}", f"{s['late_ticks']:,}",
            f"{s['features_rows']:,}", f"{s['examples_rows']:,}", (s["closed_until"] or "")[:19],
        )
    table.caption = f"{summary['ticks_read']:,} ticks read in {summary['elapsed_s']:.2f}s"
    return table
