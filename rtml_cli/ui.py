"""Terminal output: progress bars, status lines and summary tables (rich, on stderr)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
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
    wall = datetime.now(UTC)
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


def build_features(builder, console: Console, as_json: bool, stop=None) -> dict:
    """One-shot build with a progress bar over the ticks backlog; Ctrl-C or SIGTERM (`stop`)
    ends it after the step in progress, which is committed."""
    from rtml_cli.features import StepReport, summarize

    started = time.monotonic()
    total = StepReport()
    backlog = builder.backlog()
    if as_json or backlog == 0:
        total = builder.build(stop=stop)
    else:
        with progress_bar(console, "ticks") as bar:
            task = bar.add_task("features", total=backlog, status="")

            def on_step(rep):
                total.add(rep)
                bar.update(task, advance=rep.ticks, status=f"{total.bars:,} bars, {total.examples:,} examples")

            builder.build(on_step, stop)
    summary = summarize(builder, total, time.monotonic() - started)
    if stop is not None and stop.is_set() and builder.backlog():
        summary["stopped"] = f"by a signal, {builder.backlog():,} ticks before the end; run again to go on"
        if not as_json:
            console.print(f"[yellow]stopped {summary['stopped']}[/]")
    return summary


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
            sym,
            f"{s['bars_emitted']:,}",
            f"{s['examples_emitted']:,}",
            f"{s['late_ticks']:,}",
            f"{s['features_rows']:,}",
            f"{s['examples_rows']:,}",
            (s["closed_until"] or "")[:19],
        )
    table.caption = f"{summary['ticks_read']:,} ticks read in {summary['elapsed_s']:.2f}s"
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


def run_training(trainer, stop, follow: bool, poll: float, console: Console, as_json: bool) -> None:
    """A progress bar while catching up on a backlog; a status line every 2 s while following."""
    backlog = trainer.backlog()
    if as_json or backlog == 0:
        trainer.run(stop, follow, poll, on_step=None if as_json else _train_status(trainer, console))
        return
    with progress_bar(console, "examples") as bar:
        task = bar.add_task(f"train {trainer.name}", total=backlog, status="")

        def on_progress(n: int) -> None:
            m = trainer.learner.metrics.as_dict()
            sick = ", [bold red]DIVERGED[/]" if trainer.learner.diverged else ""
            bar.update(task, advance=n, status=f"MAE {_num(m['mae'])}, hit {_num(m['hit_rate'])}{sick}")

        trainer.step(on_progress, stop=stop)
    say_diverged(trainer, console)
    if follow:
        trainer.run(stop, True, poll, on_step=_train_status(trainer, console))
    else:
        trainer.run(stop, False, poll)


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

    def on_step(_n: int) -> None:
        say_diverged(trainer, console)
        now = time.monotonic()
        if now - state["last"] < 2.0:
            return
        rate = (trainer.learner.learned - state["learned"]) / (now - state["last"])
        state.update(last=now, learned=trainer.learner.learned)
        m = trainer.learner.metrics.as_dict()
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


def run_predictions(predictor, stop, follow: bool, console: Console, as_json: bool, jsonl: bool) -> None:
    """One-shot: a progress bar over the backlog. Follow: a live table on a terminal, else a
    status line every 2 s. `jsonl` streams each published prediction to stdout."""

    def emit(frame) -> None:
        if jsonl:
            write_stdout(frame.select(PREDICTION_COLUMNS).write_ndjson())

    def say_problems() -> None:
        for problem in predictor.reports():
            console.print(f"[yellow]{problem}[/]", highlight=False)
        if follow and not as_json:
            for event in predictor.events():
                console.print(f"{datetime.now().strftime('%H:%M:%S')} {event}", highlight=False)

    if not follow:
        backlog = predictor.backlog()
        if as_json or backlog == 0:
            predictor.run(stop, False, emit)
            return
        with progress_bar(console, "predictions") as bar:
            task = bar.add_task("predict", total=backlog, status="")

            def on_publish(frame) -> None:
                emit(frame)
                bar.update(task, advance=frame.height)

            predictor.run(stop, False, on_publish)
        return

    for slot in predictor.missing():
        console.print(
            f"waiting for a checkpoint of {slot.name!r} in {slot.store.dir} (run `rtml train`)", highlight=False
        )
    predictor.start_watching()
    if as_json:
        predictor.run(stop, True, emit, on_idle=say_problems)
        return
    board = PredictionBoard(predictor)
    if not console.is_terminal:
        last = [time.monotonic(), 0]

        def status() -> None:
            say_problems()
            now = time.monotonic()
            if now - last[0] >= 2.0:
                made = sum(predictor.predicted.values())
                console.print(board.status_line((made - last[1]) / (now - last[0])), highlight=False, soft_wrap=True)
                last[:] = [now, made]

        def on_publish_plain(frame) -> None:
            emit(frame)
            board.add(frame)
            status()

        predictor.run(stop, True, on_publish_plain, on_idle=status)
        return
    from rich.live import Live

    with Live(board.render(), console=console, refresh_per_second=4, transient=False) as live:
        shown = [0.0]

        def refresh() -> None:
            say_problems()
            if time.monotonic() - shown[0] >= 0.25:
                live.update(board.render())
                shown[0] = time.monotonic()

        def on_publish_live(frame) -> None:
            emit(frame)
            board.add(frame)
            refresh()

        predictor.run(stop, True, on_publish_live, on_idle=refresh)
        live.update(board.render())


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
        self.started = time.monotonic()

    def add(self, frame) -> None:
        for row in frame.group_by("symbol", "model", maintain_order=True).last().iter_rows(named=True):
            self.rows[row["symbol"], row["model"]] = row

    def status_line(self, rate: float) -> str:
        p = self.predictor
        serving = ", ".join(f"{s.name} v{s.latest.version}" if s.latest else f"{s.name} waiting" for s in p.slots)
        lat = sorted(p.latency_ms)
        return (
            f"{datetime.now().strftime('%H:%M:%S')} {sum(p.predicted.values()):,} predicted ({rate:,.0f}/s), "
            f"{serving}, {p.backlog():,} behind" + (f", latency median {_latency(lat[len(lat) // 2])}" if lat else "")
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
                _latency(r["latency_ms"]),
            )
        rate = sum(p.predicted.values()) / max(time.monotonic() - self.started, 1e-9)
        waiting = [s.name for s in p.slots if s.latest is None]
        table.caption = f"{sum(p.predicted.values()):,} predicted ({rate:,.1f}/s), {p.backlog():,} behind" + (
            f"; waiting for a checkpoint of {', '.join(waiting)}" if waiting else ""
        )
        return table


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


def run_backtest(ds, opts, console: Console, as_json: bool, stop=None) -> dict:
    """A progress line per model replayed (they can take minutes)."""
    from rtml_cli.backtest import run_backtest as run

    if as_json:
        return run(ds, opts, stop=stop)
    console.print(
        f"backtest: {ds.n:,} rows from {ds.source}, {len(ds.features)} features, label delay "
        f"{ds.delay} rows; models {', '.join(opts.models)}",
        highlight=False,
    )
    with console.status(f"replaying {len(opts.models)} model(s) over {ds.n:,} rows..."):
        return run(
            ds,
            opts,
            on_done=lambda rep: console.print(
                f"  {rep.model}: {ds.n:,} rows in {rep.seconds:.1f}s, {len(rep.drift_rows)} drifts", highlight=False
            ),
            stop=stop,
        )


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
