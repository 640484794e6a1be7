"""Terminal output: progress bars, status lines and summary tables (rich, on stderr)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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


def _started_bar(console: Console, unit: str, name: str, total: int) -> tuple[Progress | None, Any]:
    """A running progress bar over `total` units (stop it when done), or None for no work."""
    if not total:
        return None, None
    bar = progress_bar(console, unit)
    task = bar.add_task(name, total=total, status="")
    bar.start()
    return bar, task


class StatusLine:
    """A line printed every `every` seconds for unbounded runs: rate, last prices, lag."""

    def __init__(self, console: Console, every: float = 2.0, source=None):
        self.console = console
        self.every = every
        self.source = source
        self._last = time.monotonic()
        self._last_written = 0

    def update(self, summary: IngestSummary) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        rate = (summary.written - self._last_written) / (now - self._last)
        self._last, self._last_written = now, summary.written
        self.console.print(ingest_status(summary, rate, getattr(self.source, "state", None)), highlight=False)


def show_ingest(
    summary: IngestSummary, events, total: int | None, unit: str, console: Console, as_json: bool, source=None
) -> None:
    """Render `ingest.ingest_loop(...)`: a progress bar over `total` (bytes of files, ticks of
    a bounded market), else a status line every 2 s; nothing with --json. A live `source`
    says what its connection is doing while no trade has come."""
    if as_json or total is None:
        status = None if as_json else StatusLine(console, source=source)
        for _ in events:
            if status:
                status.update(summary)
        return
    with progress_bar(console, unit) as bar:
        task = bar.add_task(summary.source, total=total, status="")
        for progress in events:
            bad = sum(summary.quarantined.values())
            bar.update(task, advance=progress, status=f"{summary.received - bad:,} accepted, {bad:,} quarantined")


def ingest_status(summary: IngestSummary, rate: float, connection: str | None = None) -> str:
    wall = datetime.now(UTC)
    prices = [f"{sym} {st.last_price:g}" for sym, st in sorted(summary.symbols.items())]
    newest = max((st.last_ts for st in summary.symbols.values() if st.last_ts), default=None)
    if connection is not None and connection != "subscribed":
        clock = connection  # connecting, or retrying in N s: why
    elif newest is None:
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


def show_features(builder, events, follow: bool, console: Console, as_json: bool, stop=None) -> dict:
    """Render `builder.loop(...)` and return the run's summary. One-shot: a progress bar over
    the ticks backlog (a signal ends the run after the step in progress, which is committed).
    Following: a status line every 2 s. Nothing but the summary with --json."""
    from rtml_cli.features import StepReport, summarize

    started = last_print = time.monotonic()
    total = StepReport()
    backlog = 0 if (follow or as_json) else builder.backlog()
    bar, task = _started_bar(console, "ticks", "features", backlog)
    try:
        for rep in events:
            total.add(rep)
            if bar:
                bar.update(task, advance=rep.ticks, status=f"{total.bars:,} bars, {total.examples:,} examples")
            elif follow and not as_json and time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                console.print(features_status(builder, total), highlight=False)
    finally:
        if bar:
            bar.stop()
    summary = summarize(builder, total, time.monotonic() - started)
    if not follow and stop is not None and stop.is_set() and builder.backlog():
        summary["stopped"] = f"by a signal, {builder.backlog():,} ticks before the end; run again to go on"
        if not as_json:
            console.print(f"[yellow]stopped {summary['stopped']}[/]")
    return summary


def features_status(builder, total) -> str:
    from rtml_cli.features import NS

    backlog = builder.backlog()
    into = []  # how far (market time) the newest trade is into its symbol's open bar
    for sym, st in sorted(builder.state.items()):
        if st.max_ts is not None and st.closed_until is not None:
            into.append(f"{sym} {_age(max(0, st.max_ts - st.closed_until) / NS)}")
    return (
        f"{datetime.now().strftime('%H:%M:%S')} {total.bars:,} bars and {total.examples:,} examples this run, "
        f"{backlog:,} ticks not read yet; {late_ticks(total)}; newest trade into its open bar: " + ", ".join(into)
    )


def late_ticks(total) -> str:
    """The late ticks of a run per symbol, with what to do about them."""
    late = {sym: r.late for sym, r in sorted(total.symbols.items()) if r.late}
    if not late:
        return "no late ticks"
    per = ", ".join(f"{sym} {n:,}" for sym, n in late.items())
    return f"late ticks: {per} (raise --grace above ingest's --flush-interval plus the feed's latency)"


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
            sym,
            f"{s['bars_emitted']:,}",
            f"{s['examples_emitted']:,}",
            f"{s['late_ticks']:,}",
            f"{s['features_rows']:,}",
            f"{s['examples_rows']:,}",
            (s["closed_until"] or "")[:19],
        )
    table.caption = f"{summary['ticks_read']:,} ticks read in {summary['elapsed_s']:.2f}s"
    if summary.get("late_ticks"):
        table.caption += (
            f"\n[yellow]{summary['late_ticks']:,} ticks arrived after their bar had closed (counted, not merged): "
            "raise --grace above ingest's --flush-interval plus the feed's latency[/]"
        )
    gaps = {sym: s["gap_bars_skipped"] for sym, s in summary["symbols"].items() if s.get("gap_bars_skipped")}
    if gaps:
        from rtml_cli.features import MAX_EMPTY_SECONDS

        table.caption += (
            "\n[yellow]"
            + ", ".join(f"{sym}: {n:,}" for sym, n in gaps.items())
            + (
                f" empty bars not emitted: gaps of more than {MAX_EMPTY_SECONDS // 86_400} days without a trade "
                "(or a trade stamped far off)[/]"
            )
        )
    return table


def show_training(trainer, events, console: Console, as_json: bool) -> None:
    """Render `trainer.loop(...)`: a progress bar while the first pass catches up on a backlog,
    then a status line every 2 s; nothing but the end with --json."""
    from rtml_cli.train import Learned

    backlog = 0 if as_json else trainer.backlog()
    bar, task = _started_bar(console, "examples", f"train {trainer.name}", backlog)
    status = None if as_json else _train_status(trainer, console)
    try:
        for event in events:
            if isinstance(event, Learned):
                if bar:
                    m = trainer.metrics.as_dict()
                    sick = ", [bold red]DIVERGED[/]" if trainer.learner.diverged else ""
                    bar.update(task, advance=event.n, status=f"MAE {_num(m['mae'])}, hit {_num(m['hit_rate'])}{sick}")
                continue
            if bar:  # the first pass is over: the backlog is learned
                bar.stop()
                bar = None
            if status:
                status()
    finally:
        if bar:
            bar.stop()


def say_diverged(trainer, console: Console) -> None:
    """Once per run, as soon as it is known: the model blew up."""
    d = trainer.learner.diverged
    if d is None or getattr(trainer, "_said_diverged", False):
        return
    trainer._said_diverged = True
    console.print(
        f"[bold red]warning:[/] {trainer.name} diverged at example {d['at_example']:,}: {d['why']}. Its checkpoints "
        "are marked diverged and `rtml predict` keeps serving the last healthy one; train another spec or "
        "--param under a new --name (see `rtml models`)",
        highlight=False,
    )


def _train_status(trainer, console: Console):
    state = {"last": time.monotonic(), "learned": trainer.learner.learned}

    def on_step() -> None:
        say_diverged(trainer, console)
        now = time.monotonic()
        if now - state["last"] < 2.0:
            return
        rate = (trainer.learner.learned - state["learned"]) / (now - state["last"])
        state.update(last=now, learned=trainer.learner.learned)
        m = trainer.metrics.as_dict()
        stall = trainer.checkpointer.stalls_ms[-1] if trainer.checkpointer.stalls_ms else None
        console.print(
            f"{datetime.now().strftime('%H:%M:%S')} {trainer.learner.learned:,} learned ({rate:,.0f}/s), "
            f"v{trainer.version or 0}, MAE {_num(m['mae'])}, hit {_num(m['hit_rate'])}, "
            f"{trainer.backlog():,} behind, trained until {(trainer.trained_until or '')[:19]}"
            + (f", last stall {stall:.2f} ms" if stall is not None else "")
            + (", DIVERGED" if trainer.learner.diverged else ""),
            highlight=False,
        )

    return on_step


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _count(value, scale: float = 1, unit: str = "") -> str:
    """A count for a table; whatever a damaged manifest holds instead is shown as it is."""
    return f"{value / scale:,.0f}{unit}" if isinstance(value, (int, float)) else str(value or "-")


def train_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"rtml train: {summary['name']} ({summary['model']})", title_justify="left", show_header=False)
    m = summary["metrics"]
    stall = summary["stall_ms"]
    rows = [
        ("learned this run", f"{summary['learned_this_run']:,}"),
        ("examples learned in all", f"{summary['examples_learned']:,}"),
        ("checkpoint version", str(summary["version"])),
        ("checkpoints written", ", ".join(map(str, summary["checkpoints_written"][-5:])) or "-"),
        (
            "stall per checkpoint",
            f"max {_num(stall['max'])} ms, median {_num(stall['median'])} ms ({stall['snapshots']})",
        ),
        ("trained until", str(summary["trained_until"])),
        (f"rolling MAE / RMSE / hit rate ({m['n']})", f"{_num(m['mae'])} / {_num(m['rmse'])} / {_num(m['hit_rate'])}"),
        ("drifts detected", str(summary["drift_count"])),
        (
            "diverged",
            f"at example {summary['diverged']['at_example']:,}: {summary['diverged']['why']}"
            if summary.get("diverged")
            else "no",
        ),
        ("examples behind", f"{summary['backlog']:,}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def checkpoints_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="checkpoints", title_justify="left")
    for col in ("name", "version", "examples", "trained until", "MAE", "hit rate", "size", "status"):
        table.add_column(col)
    for r in rows:
        m = r.get("metrics") or {}
        table.add_row(
            r["name"],
            str(r["version"]),
            _count(r.get("examples_learned")),
            str(r.get("trained_until") or "")[:19],
            _num(m.get("mae")),
            _num(m.get("hit_rate")),
            _count(r.get("size"), 1e3, " kB"),
            "diverged" if r.get("diverged") and r["status"] == "ok" else r["status"],  # predict serves neither
        )
    return table


# -- predict -----------------------------------------------------------------------------------

PREDICTION_COLUMNS = (
    "offset",
    "ts",
    "symbol",
    "features_offset",
    "model",
    "prediction",
    "model_version",
    "model_trained_until",
    "latency_ms",
)


def show_predictions(predictor, events, follow: bool, console: Console, as_json: bool, jsonl: bool) -> None:
    """Render `predictor.loop(...)`. One-shot: a progress bar over the backlog. Following: a
    live table on a terminal, else a status line every 2 s. `jsonl` streams each published
    prediction to stdout."""
    from rtml_cli.predict import Notice, Published, Waiting

    view = None
    if follow and not as_json:
        view = _LiveBoard(predictor, console) if console.is_terminal else _PlainBoard(predictor, console)
    backlog = 0 if (follow or as_json) else predictor.backlog()
    bar, task = _started_bar(console, "predictions", "predict", backlog)
    try:
        for event in events:
            if isinstance(event, Published):
                if jsonl:
                    write_stdout(event.frame.select(PREDICTION_COLUMNS).write_ndjson())
                if bar:
                    bar.update(task, advance=event.frame.height)
                if view:
                    view.add(event.frame)
            elif isinstance(event, Waiting):
                console.print(
                    f"waiting for a checkpoint of {event.name!r} in {event.directory} (run `rtml train`)",
                    highlight=False,
                )
            elif isinstance(event, Notice):
                if event.problem:
                    console.print(f"[yellow]{event.text}[/]", highlight=False)
                elif not as_json:
                    console.print(f"{datetime.now().strftime('%H:%M:%S')} {event.text}", highlight=False)
            if view:
                view.tick()
    finally:
        if bar:
            bar.stop()
        if view:
            view.close()


class _PlainBoard:
    """Following, not on a terminal: a status line every 2 s."""

    def __init__(self, predictor, console: Console):
        self.board = PredictionBoard(predictor)
        self.predictor, self.console = predictor, console
        self.last, self.made = time.monotonic(), 0

    def add(self, frame) -> None:
        self.board.add(frame)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= 2.0:
            made = sum(self.predictor.predicted.values())
            rate = (made - self.made) / (now - self.last)
            self.console.print(self.board.status_line(rate), highlight=False, soft_wrap=True)
            self.last, self.made = now, made

    def close(self) -> None:
        pass


class _LiveBoard:
    """Following, on a terminal: the newest prediction per symbol and model, redrawn 4 times a second."""

    def __init__(self, predictor, console: Console):
        from rich.live import Live

        self.board = PredictionBoard(predictor)
        self.live = Live(self.board.render(), console=console, refresh_per_second=4, transient=False)
        self.live.start()
        self.shown = 0.0

    def add(self, frame) -> None:
        self.board.add(frame)

    def tick(self) -> None:
        if time.monotonic() - self.shown >= 0.25:
            self.live.update(self.board.render())
            self.shown = time.monotonic()

    def close(self) -> None:
        self.live.update(self.board.render())
        self.live.stop()


def write_stdout(text: str) -> None:
    """Write all of `text` to stdout, whole lines only.

    A pipe that is full blocks the write; a Ctrl-C or SIGTERM arriving then must not cut
    a line short, which buffered text I/O was seen to do: write the bytes with os.write
    (retried after signals) until every one is out.
    """
    import io
    import os
    import sys

    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # not a real file (tests' capture)
        sys.stdout.write(text)
        return
    view = memoryview(text.encode())
    while view:
        view = view[os.write(fd, view) :]


class PredictionBoard:
    """The newest prediction per symbol and model, for the live view."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.rows: dict[tuple[str, str], dict] = {}
        self.made: dict[tuple[str, str], float] = {}  # when each row was predicted (monotonic)
        self.started = time.monotonic()

    def add(self, frame) -> None:
        now = time.monotonic()
        for row in frame.group_by("symbol", "model", maintain_order=True).last().iter_rows(named=True):
            self.rows[row["symbol"], row["model"]] = row
            self.made[row["symbol"], row["model"]] = now

    def status_line(self, rate: float) -> str:
        p = self.predictor
        serving = ", ".join(f"{s.name} v{s.latest.version}" if s.latest else f"{s.name} waiting" for s in p.slots)
        lat = sorted(p.latency_ms)
        median = _live_latency(lat[len(lat) // 2]) if lat else "-"
        return (
            f"{datetime.now().strftime('%H:%M:%S')} {sum(p.predicted.values()):,} predicted ({rate:,.0f}/s), "
            f"{serving}, {p.backlog():,} feature rows not predicted yet"
            + (f", latency median {median}" if median != "-" else "")
        )

    def render(self):
        from rich.table import Table

        p = self.predictor
        table = Table(title=f"rtml predict --follow ({p.data_dir})", title_justify="left")
        for col, just in (
            ("symbol", "left"),
            ("model", "left"),
            ("bar", "left"),
            ("prediction", "right"),
            ("", "center"),
            ("version", "right"),
            ("model age", "right"),
            ("predicted", "right"),
            ("latency", "right"),
        ):
            table.add_column(col, justify=just)
        now = datetime.now(UTC)
        for (sym, model), r in sorted(self.rows.items()):
            served = p._serving.get(model)
            created = _parse_iso(served.created_at) if served is not None else None
            y = r["prediction"]
            arrow = "[green]▲[/]" if y > 0 else "[red]▼[/]" if y < 0 else "·"
            table.add_row(
                sym,
                model,
                f"{r['ts']:%Y-%m-%d %H:%M:%S}",
                f"{y:+.3g}",
                arrow,
                str(r["model_version"]),
                _age((now - created).total_seconds()) if created else "-",
                f"{_age(time.monotonic() - self.made[sym, model])} ago",
                _live_latency(r["latency_ms"]),
            )
        rate = sum(p.predicted.values()) / max(time.monotonic() - self.started, 1e-9)
        waiting = [s.name for s in p.slots if s.latest is None]
        table.caption = (
            f"{sum(p.predicted.values()):,} predicted ({rate:,.1f}/s), {p.backlog():,} feature rows not predicted "
            "yet; latency: from the bar's end to its prediction, for live data only"
        ) + (f"; waiting for a checkpoint of {', '.join(waiting)}" if waiting else "")
        return table


def _live_latency(ms: float | None) -> str:
    """The wall time from a bar's end to its prediction, where that means something: for live
    data. A replay of history (days behind) or a fast simulated clock (ahead) shows '-'."""
    if ms is None or not 0 <= ms <= LIVE_LATENCY_MS:
        return "-"
    return _latency(ms)


LIVE_LATENCY_MS = 600_000  # within ten minutes of the bar's end: live


def _parse_iso(text):
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _latency(ms: float) -> str:
    return f"{ms:,.0f} ms" if abs(ms) < 10_000 else _age(ms / 1000)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.0f}d"


def predict_table(summary: dict):
    from rich.table import Table

    table = Table(title="rtml predict", title_justify="left")
    for col in ("model", "version", "trained until", "predicted", "versions served", "skipped"):
        table.add_column(col)
    for name, m in summary["models"].items():
        served = m["versions_served"]
        table.add_row(
            name,
            str(m["version"] or "-"),
            str(m["trained_until"] or "")[:19],
            f"{m['predicted_this_run']:,}",
            ", ".join(map(str, served[-6:])) + (" ..." if len(served) > 6 else "") or "-",
            str(len(m["skipped_checkpoints"])),
        )
    lat = summary["latency_ms"]
    table.caption = (
        f"{summary['predicted_this_run']:,} predictions in {summary['elapsed_s']:.2f}s, {summary['backlog']:,} behind"
        + (f", latency median {_latency(lat['median'])}" if lat["median"] is not None else "")
    )
    return table


# -- backtest ----------------------------------------------------------------------------------


def show_backtest(ds, opts, replays, console: Console, as_json: bool) -> dict:
    """Render `backtest.replay_all(...)` (a line per model replayed: they can take minutes)
    and return the scored result."""
    from rtml_cli.backtest import result_of

    started = time.perf_counter()
    done = []
    if not as_json:
        console.print(
            f"backtest: {ds.n:,} rows from {ds.source}, {len(ds.features)} features, label delay "
            f"{ds.delay} rows; models {', '.join(opts.models)}",
            highlight=False,
        )
    with (
        console.status(f"replaying {len(opts.models)} model(s) over {ds.n:,} rows...") if not as_json else nullcontext()
    ):
        for rep in replays:
            done.append(rep)
            if not as_json:
                console.print(
                    f"  {rep.model}: {ds.n:,} rows in {rep.seconds:.1f}s, {len(rep.drift_rows)} drifts",
                    highlight=False,
                )
    return result_of(ds, opts, done, time.perf_counter() - started)


def backtest_tables(result: dict) -> list:
    """What was run, the tables of `report.sections` and the warnings: the same story the
    HTML report tells."""
    from rich.table import Table
    from rich.text import Text

    from rtml_cli.report import header_lines, sections

    head = Table(title=f"rtml backtest: {result['source']}", title_justify="left", show_header=False, box=None)
    head.add_column(style="bold")
    head.add_column()
    for key, value in header_lines(result):
        head.add_row(key, value)
    out: list = [head]
    for sec in sections(result):
        table = Table(title=sec.title, title_justify="left", caption=sec.caption or None, caption_justify="left")
        for i, name in enumerate(sec.headers):
            table.add_column(name, justify="left" if i < 2 or name == "symbol" else "right")
        for row, faint in zip(sec.rows, sec.dim or [False] * len(sec.rows), strict=True):
            table.add_row(*row, style="dim" if faint else None)
        out.append(table)
    for warning in result["warnings"]:
        out.append(Text(f"warning: {warning}", style="yellow"))
    return out


def status_view(snap: dict):
    """`rtml status` as tables: logs, stages, consumers, models, and a freshness line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if snap["empty"]:
        return Text(f"{snap['data_dir']} has no data yet: start with `rtml ingest`")
    logs = Table(title="logs", title_justify="left")
    for col in ("log", "symbols", "rows", "newest time (UTC)"):
        logs.add_column(col, justify="left" if col != "rows" and col != "symbols" else "right")
    for name, log in snap["logs"].items():
        logs.add_row(name, f"{log['partitions']:,}", f"{log['rows']:,}", _when(log["newest_ts"]))
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "running", "detail"):
        stages.add_column(col)
    for name, st in snap["stages"].items():
        detail = f"heartbeat {st['heartbeat_age_s']:,.1f} s ago" if "heartbeat_age_s" in st else ""
        stages.add_row(name, f"pid {st['pid']}" if st["running"] else "[dim]no[/]", detail)
    consumers = Table(title="consumers (behind their input)", title_justify="left")
    for col in ("consumer", "rows behind", "market time behind"):
        consumers.add_column(col, justify="left" if col == "consumer" else "right")
    for name, c in snap["consumers"].items():
        if c is None:
            continue
        if "problem" in c:
            consumers.add_row(name, f"[yellow]{c['problem']}[/]", "")
            continue
        behind = "-" if c["behind_s"] is None else _age(max(0.0, c["behind_s"]))
        consumers.add_row(name, f"{c['behind_rows']:,}", behind)
    models = Table(title="models (newest checkpoint)", title_justify="left")
    for col in ("model", "version", "examples", "trained until (UTC)", "written", "state"):
        models.add_column(col, justify="right" if col in ("version", "examples") else "left")
    for name, cp in snap["checkpoints"].items():
        if cp["version"] is None:
            models.add_row(name, "-", "-", "", "", "no checkpoint yet")
            continue
        state = (
            "[bold red]diverged[/]"
            if cp["diverged"]
            else "ok"
            if cp["verified"] == "ok"
            else f"[red]{cp['verified']}[/]"
        )
        written = "-" if cp["age_s"] is None else f"{_age(cp['age_s'])} ago"
        models.add_row(
            name, str(cp["version"]), f"{cp['examples_learned'] or 0:,}", _when(cp["trained_until"]), written, state
        )
    f = snap["freshness"]
    if f["newest_prediction"]:
        fresh = (
            f"freshness: newest trade {_when(f['newest_tick'])}, newest prediction for the bar ending "
            f"{_age(max(0.0, f['market_lag_s'] or 0.0))} before it (market time), made "
            f"{_age(max(0.0, f['wall_age_s'] or 0.0))} ago (wall time)"
        )
    else:
        fresh = "freshness: no prediction yet"
    parts = [logs, stages, consumers, models] if snap["checkpoints"] else [logs, stages, consumers]
    return Group(*parts, Text(fresh))


def watch_status(look, stop, interval: float, as_json: bool) -> None:
    """`rtml status --watch`: redraw in place on a terminal; else one snapshot per interval
    (a JSON object per line with --json)."""
    import json

    from rich.console import Console

    out = Console()
    if as_json or not out.is_terminal:
        while True:
            snap = look()
            if as_json:
                out.print_json(json.dumps(snap)) if out.is_terminal else print(json.dumps(snap), flush=True)
            else:
                out.print(status_view(snap))
            if stop.wait(interval):
                return
    from rich.live import Live

    with Live(status_view(look()), console=out, refresh_per_second=4, transient=False) as live:
        while not stop.wait(interval):
            live.update(status_view(look()))


def _when(iso: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` (UTC), whole: never cut mid-way."""
    if not iso or not isinstance(iso, str):
        return "-"
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    value = value.astimezone(UTC) if value.tzinfo else value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def show_run(sup, events, console: Console, as_json: bool, source: str, speed: float | None) -> None:
    """Render `Supervisor.loop(...)` as one live dashboard (a line per interval when stderr is
    not a terminal; crashes only with --json), then stop the stages in pipeline order."""
    from rtml_cli.run import Crashed, Started, Tick
    from rtml_cli.status import snapshot

    board = _RunBoard(sup, source, speed)
    live = None
    if not as_json and console.is_terminal:
        from rich.live import Live

        live = Live(board.render(), console=console, refresh_per_second=2, transient=False)
        live.start()
    last_look = 0.0
    try:
        for event in events:
            if isinstance(event, Crashed):
                what = (
                    "restarting in " + f"{event.restart_in:.0f} s" if event.restart_in is not None else "ending the run"
                )
                lines = "\n".join(f"    {line}" for line in event.last_lines)
                console.print(
                    f"[bold red]{event.stage} died (exit {event.exit_code})[/], {what}; it said:\n{lines}",
                    highlight=False,
                )
            elif isinstance(event, Started) and event.restart and not as_json:
                console.print(f"{event.stage} restarted (pid {event.pid}, restart {event.restart})", highlight=False)
            if as_json or not isinstance(event, Tick) or time.monotonic() - last_look < (1.0 if live else 5.0):
                continue
            last_look = time.monotonic()
            try:
                board.look(snapshot(sup.data_dir))
            except Exception as exc:  # a look at the data must never stop the run
                board.problem = f"{type(exc).__name__}: {exc}"
            if live:
                live.update(board.render())
            else:
                console.print(board.line(), highlight=False, soft_wrap=True)
    finally:

        def stopping(st) -> None:
            if live:
                live.update(board.render(f"stopping {st.name}..."))
            elif not as_json:
                console.print(f"stopping {st.name}", highlight=False)

        sup.shutdown(on_stop=stopping)
        if live:
            live.update(board.render("stopped"))
            live.stop()


class _RunBoard:
    """The dashboard of `rtml run`: stages, market, models, freshness."""

    def __init__(self, sup, source: str, speed: float | None):
        self.sup, self.source, self.speed = sup, source, speed
        self.snap: dict | None = None
        self.rate = 0.0  # ticks written per second
        self._prev: tuple[float, int] | None = None
        self.problem: str | None = None

    def look(self, snap: dict) -> None:
        now, ticks = time.monotonic(), snap["logs"]["ticks"]["rows"]
        if self._prev is not None and now > self._prev[0]:
            self.rate = (ticks - self._prev[1]) / (now - self._prev[0])
        self._prev = (now, ticks)
        self.snap = snap
        self.problem = None

    def line(self) -> str:
        """One line for a log file or a pipe."""
        s = self.snap
        if s is None:
            return f"{datetime.now().strftime('%H:%M:%S')} starting"
        parts = [
            f"{datetime.now().strftime('%H:%M:%S')} {s['logs']['ticks']['rows']:,} ticks ({self.rate:,.0f}/s)",
            f"{s['logs']['features']['rows']:,} bars",
            f"{s['logs']['examples']['rows']:,} examples",
        ]
        for name, cp in s["checkpoints"].items():
            parts.append(f"{name} v{cp.get('version') or 0}")
        parts.append(f"{s['logs']['predictions']['rows']:,} predictions")
        dead = [st.name for st in self.sup.stages if st.state not in ("running", "finished")]
        if dead:
            parts.append("not running: " + ", ".join(dead))
        return ", ".join(parts)

    def render(self, note: str | None = None):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        up = time.monotonic() - self.sup.started
        pace = "" if self.speed is None else f" at {self.speed:g}x"
        head = Text(
            f"rtml run: {self.source}{pace}, {self.sup.data_dir}, up {_age(up)}"
            + (f"  [{note}]" if note else "  (Ctrl-C stops the stages in pipeline order)")
        )
        s = self.snap or {}
        consumers = s.get("consumers", {})
        stages = Table(title="stages", title_justify="left", expand=False)
        for col in ("stage", "state", "restarts", "behind (rows)", "behind (market)"):
            stages.add_column(col, justify="right" if col.startswith(("restarts", "behind")) else "left")
        for st in self.sup.stages:
            lag = [
                c
                for n, c in consumers.items()
                if st.spec.follows and (n == st.spec.follows or n.startswith(st.spec.follows + " "))
            ]
            rows = sum(c["behind_rows"] for c in lag if c and "behind_rows" in c) if lag else None
            secs = [c["behind_s"] for c in lag if c and c.get("behind_s") is not None]
            state = st.state if st.state != "running" else f"running (pid {st.pid})"
            colour = "green" if st.state in ("running", "finished") else "red"
            stages.add_row(
                st.name,
                f"[{colour}]{state}[/]",
                str(st.restarts),
                "-" if rows is None else f"{rows:,}",
                _age(max(0.0, max(secs))) if secs else "-",
            )
        parts: list[Any] = [head, stages]
        logs = s.get("logs")
        if logs:
            market = Table(title=f"market ({self.rate:,.0f} ticks/s)", title_justify="left")
            for col in ("symbol", "last price", "ticks", "bars", "examples", "newest prediction"):
                market.add_column(col, justify="left" if col in ("symbol", "newest prediction") else "right")
            for sym, t in logs["ticks"]["symbols"].items():
                preds = logs["predictions"]["symbols"].get(sym, {}).get("newest_predictions", {})
                shown = ", ".join(
                    f"{m} {p['prediction']:+.2e}" for m, p in preds.items() if p["prediction"] is not None
                )
                market.add_row(
                    sym,
                    _num(t.get("last")),
                    f"{t['rows']:,}",
                    f"{logs['features']['symbols'].get(sym, {}).get('rows', 0):,}",
                    f"{logs['examples']['symbols'].get(sym, {}).get('rows', 0):,}",
                    shown or "-",
                )
            parts.append(market)
        if s.get("checkpoints"):
            models = Table(title="models", title_justify="left")
            for col in ("model", "version", "examples learned", "rolling MAE", "hit rate", "trained until (UTC)"):
                models.add_column(col, justify="left" if col in ("model", "trained until (UTC)") else "right")
            for name, cp in s["checkpoints"].items():
                m = cp.get("metrics") or {}
                sick = " [bold red]diverged[/]" if cp.get("diverged") else ""
                models.add_row(
                    name + sick,
                    str(cp.get("version") or "-"),
                    f"{cp.get('examples_learned') or 0:,}",
                    _num(m.get("mae")),
                    _num(m.get("hit_rate")),
                    _when(cp.get("trained_until")),
                )
            parts.append(models)
        f = s.get("freshness") or {}
        if f.get("newest_prediction"):
            parts.append(
                Text(
                    f"freshness: newest trade {_when(f['newest_tick'])}; the newest prediction is for the bar ending "
                    f"{_age(max(0.0, f['market_lag_s'] or 0.0))} before it (market time) and was made "
                    f"{_age(max(0.0, f['wall_age_s'] or 0.0))} ago (wall time)"
                )
            )
        if self.problem:
            parts.append(Text(f"could not look at the data: {self.problem}", style="yellow"))
        return Group(*parts)


def run_summary(summary: dict):
    """What `rtml run` leaves: each stage's end, and where the data stands."""
    from rich.console import Group
    from rich.table import Table

    stages = Table(title=f"rtml run: {summary['elapsed_s']:,.0f} s", title_justify="left")
    for col in ("stage", "state", "exit", "restarts", "log"):
        stages.add_column(col)
    for name, st in summary["stages"].items():
        stages.add_row(
            name, st["state"], "-" if st["exit_code"] is None else str(st["exit_code"]), str(st["restarts"]), st["log"]
        )
    return Group(stages, status_view(summary["status"]))
