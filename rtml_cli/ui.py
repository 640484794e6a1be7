"""Terminal output: progress bars, status lines and summary tables (rich, on stderr)."""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml_cli.sources import LIVE, feed_state

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod
    from rich.progress import Progress

    from rtml_cli.ingest import IngestSummary


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def out_console(**kw) -> Console:
    """A console on stdout. A reader that goes away (`rtml status | head -1`) ends the command as
    SIGPIPE ends a Unix tool, exit 141 (rich's own handling exits 1, an error)."""
    from rich.console import Console

    class Out(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return Out(**kw)


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
    from rich.table import Column

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    wraps = Column(no_wrap=False, overflow="fold")  # a narrow terminal wraps the words, cuts nothing
    return Progress(
        TextColumn("[bold]{task.description}", table_column=wraps),
        BarColumn(bar_width=20),
        amount,
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=False, overflow="fold")),
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


class Screen:
    """A follow mode's live view. On a terminal: `render()` (a table) redrawn in place, at most
    four times a second. Otherwise (a pipe, a log file): `line()` printed every `every` seconds.
    Call `tick()` as events come and `close()` at the end; messages printed on the same console
    meanwhile appear above the table."""

    def __init__(self, console: Console, render, line, every: float = 2.0):
        self.console, self.render, self.line = console, render, line
        self.live = None
        self.every = every
        self.last = time.monotonic()
        if console.is_terminal and not console.is_dumb_terminal:
            from rich.live import Live

            self.every = 0.25
            self.live = Live(render(), console=console, auto_refresh=False, transient=False)
            self.live.start()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        if self.live:
            self.live.update(self.render(), refresh=True)
        else:
            self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.live:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None


class Rate:
    """Units per second of a growing count, over the last few seconds."""

    def __init__(self, count, window: float = 5.0):
        self.count, self.window = count, window
        self.samples = deque([(time.monotonic(), count())])

    def __call__(self) -> float:
        now, n = time.monotonic(), self.count()
        self.samples.append((now, n))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        return (n - n0) / (now - t0) if now > t0 else 0.0


def _view(title: str, table, caption: str = ""):
    """A live view: a title line, the table, a caption; the lines wrap at the terminal's width,
    not the table's."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="bold"), table, *([Text.from_markup(caption)] if caption else []))


def _table(title: str | None, columns: list[tuple[str, JustifyMethod]], caption: str | None = None):
    """A table that fits a narrow terminal without cutting anything: times (a header ending
    in "(UTC)") are never wrapped, other cells wrap at spaces or fold."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for header, justify in columns:
        if header.endswith("(UTC)"):
            table.add_column(header, justify=justify, no_wrap=True, min_width=19)
        else:  # a word too long for a narrow terminal goes on over the next line, whole
            table.add_column(header, justify=justify, overflow="fold")
    return table


def show_ingest(
    summary: IngestSummary, events, total: int | None, unit: str, console: Console, as_json: bool, source=None
) -> None:
    """Render `ingest.ingest_loop(...)`: a progress bar over `total` (bytes of files, ticks of
    a bounded market), else a live table per symbol (a line every 2 s off a terminal);
    nothing with --json. A live `source` says what its connection is doing."""
    if as_json:
        for _ in events:
            pass
        return
    if total is None:
        rate = Rate(lambda: summary.written)
        connection = lambda: feed_state(source)  # noqa: E731
        screen = Screen(
            console,
            lambda: ingest_view(summary, rate(), connection()),
            lambda: ingest_status(summary, rate(), connection()),
        )
        try:
            for _ in events:
                screen.tick()
        finally:
            screen.close()
        return
    with progress_bar(console, unit) as bar:
        task = bar.add_task(summary.source, total=total, status="")
        for progress in events:
            bad = sum(summary.quarantined.values())
            bar.update(task, advance=progress, status=f"{summary.received - bad:,} accepted, {bad:,} quarantined")


def _ingest_clock(summary: IngestSummary, connection: str | None) -> str:
    """What the feed is doing: connecting, waiting, how far behind the wall clock a live feed is,
    or where a simulated or replayed clock stands."""
    newest = max((st.last_ts for st in summary.symbols.values() if st.last_ts), default=None)
    if connection is not None and connection != "subscribed":
        return connection  # connecting, or retrying in N s: why
    if newest is None:
        return "waiting for trades"
    if summary.source in LIVE:  # a real feed: how far the log is behind the wall clock
        return f"lag {(datetime.now(UTC) - newest).total_seconds():.1f}s"
    return f"market time {newest:%Y-%m-%d %H:%M:%S}"  # ahead of or behind the wall clock


def ingest_status(summary: IngestSummary, rate: float, connection: str | None = None) -> str:
    prices = [f"{sym} {st.last_price:g}" for sym, st in sorted(summary.symbols.items())]
    bad = sum(summary.quarantined.values())
    return (
        f"{datetime.now().strftime('%H:%M:%S')} {summary.written:,} ticks ({rate:,.0f}/s)"
        f"{f', {bad:,} quarantined' if bad else ''}, {_ingest_clock(summary, connection)}  " + "  ".join(prices)
    )


def ingest_view(summary: IngestSummary, rate: float, connection: str | None = None):
    """The live table of `rtml ingest`: a row per symbol."""
    bad = sum(summary.quarantined.values())
    table = _table(
        None, [("symbol", "left"), ("ticks", "right"), ("last price", "right"), ("newest trade (UTC)", "left")]
    )
    for sym, st in sorted(summary.symbols.items()):
        table.add_row(esc(sym), f"{st.written:,}", _price(st.last_price), _when(st.last_ts))
    return _view(
        f"rtml ingest ({summary.source}): {_ingest_clock(summary, connection)}",
        table,
        f"{summary.written:,} ticks written ({rate:,.0f}/s) in {summary.flushes:,} flushes"
        + (f", {bad:,} quarantined" if bad else "")
        + "; Ctrl-C stops after a last flush",
    )


def ingest_table(summary: IngestSummary):
    table = _table(
        f"rtml ingest: {summary.source} ({summary.stopped_by})",
        [
            ("symbol", "left"),
            ("written", "right"),
            ("first trade (UTC)", "left"),
            ("last trade (UTC)", "left"),
            ("last price", "right"),
        ],
        f"{summary.written:,} ticks written in {summary.elapsed:.2f}s ({summary.rate:,.0f}/s), "
        f"{summary.parts} parts, {summary.flushes} flushes",
    )
    for sym, st in sorted(summary.symbols.items()):
        table.add_row(esc(sym), f"{st.written:,}", _when(st.first_ts), _when(st.last_ts), _price(st.last_price))
    return table


def quarantine_table(summary: IngestSummary):
    from rich.table import Table

    table = Table(title="quarantined (not written)", title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for reason, n in sorted(summary.quarantined.items()):
        table.add_row(reason, f"{n:,}")
    return table


def show_features(builder, events, follow: bool, console: Console, as_json: bool, stop=None) -> dict:
    """Render `builder.loop(...)` and return the run's summary. One-shot: a progress bar over
    the ticks backlog (a signal ends the run after the step in progress, which is committed).
    Following: a live table per symbol (a line every 2 s off a terminal). Nothing but the
    summary with --json."""
    from rtml_cli.features import StepReport, summarize

    started = time.monotonic()
    total = StepReport()
    backlog = 0 if (follow or as_json) else builder.backlog()
    bar, task = _started_bar(console, "ticks", "features", backlog)
    screen = None
    if follow and not as_json:
        rate = Rate(lambda: total.ticks)
        screen = Screen(
            console, lambda: features_view(builder, total, rate()), lambda: features_status(builder, total, rate())
        )
    try:
        for rep in events:
            total.add(rep)
            if bar:
                bar.update(task, advance=rep.ticks, status=f"{total.bars:,} bars, {total.examples:,} examples")
            elif screen:
                screen.tick()
    finally:
        if bar:
            bar.stop()
        if screen:
            screen.close()
    summary = summarize(builder, total, time.monotonic() - started)
    if not follow and stop is not None and stop.is_set() and builder.backlog():
        summary["stopped"] = f"by a signal, {builder.backlog():,} ticks before the end; run again to go on"
        if not as_json:
            console.print(f"[yellow]stopped {summary['stopped']}[/]")
    return summary


def _into_open_bar(st) -> str:
    """How far (market time) a symbol's newest trade is into its open bar."""
    from rtml_cli.features import NS

    if st.max_ts is None or st.closed_until is None:
        return "-"
    return _age(max(0, st.max_ts - st.closed_until) / NS)


def features_status(builder, total, rate: float) -> str:
    into = [f"{sym} {_into_open_bar(st)}" for sym, st in sorted(builder.state.items())]
    return (
        f"{datetime.now().strftime('%H:%M:%S')} {total.bars:,} bars and {total.examples:,} examples this run "
        f"({rate:,.0f} ticks/s), {builder.backlog():,} ticks not read yet; {late_ticks(total)}; "
        "newest trade into its open bar: " + ", ".join(into)
    )


def features_view(builder, total, rate: float):
    """The live table of `rtml features --follow`: a row per symbol."""
    from rtml_cli.features import NS

    spec = builder.spec
    table = _table(
        None,
        [
            ("symbol", "left"),
            ("bars", "right"),
            ("examples", "right"),
            ("late ticks", "right"),
            ("closed until (UTC)", "left"),
            ("open bar", "right"),
        ],
    )
    for sym, st in sorted(builder.state.items()):
        r = total.symbols.get(sym)
        closed = None if st.closed_until is None else datetime.fromtimestamp(st.closed_until / NS, UTC)
        table.add_row(
            esc(sym),
            f"{r.bars:,}" if r else "0",
            f"{r.examples:,}" if r else "0",
            f"{r.late:,}" if r else "0",
            _when(closed),
            _into_open_bar(st),
        )
    return _view(
        f"rtml features --follow: {spec.bar_s}s bars, horizon {spec.horizon}, target {spec.target}",
        table,
        f"this run: {total.ticks:,} ticks read ({rate:,.0f}/s), {builder.backlog():,} not read yet. bars, "
        "examples and late ticks: this run's. open bar: how far the newest trade is into it (market time)"
        + ("" if not total.late else f"\n[yellow]{esc(late_ticks(total))}[/]"),
    )


def late_ticks(total) -> str:
    """The late ticks of a run per symbol, with what to do about them."""
    late = {sym: r.late for sym, r in sorted(total.symbols.items()) if r.late}
    if not late:
        return "no late ticks"
    per = ", ".join(f"{sym} {n:,}" for sym, n in late.items())
    return f"late ticks: {per} (raise --grace above ingest's --flush-interval plus the feed's latency)"


def features_table(summary: dict):
    p = summary["params"]
    table = _table(
        f"rtml features: {p['bar_s']}s bars, horizon {p['horizon']}, target {p['target']}",
        [
            ("symbol", "left"),
            ("new bars", "right"),
            ("new examples", "right"),
            ("late ticks", "right"),
            ("bars in log", "right"),
            ("closed until (UTC)", "left"),
        ],
    )
    for sym, s in summary["symbols"].items():
        table.add_row(
            esc(sym),
            f"{s['bars_emitted']:,}",
            f"{s['examples_emitted']:,}",
            f"{s['late_ticks']:,}",
            f"{s['features_rows']:,}",
            _when(s["closed_until"]),
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
            + esc(", ".join(f"{sym}: {n:,}" for sym, n in gaps.items()))
            + (
                f" empty bars not emitted: gaps of more than {MAX_EMPTY_SECONDS // 86_400} days without a trade "
                "(or a trade stamped far off)[/]"
            )
        )
    return table


def show_training(trainer, events, console: Console, as_json: bool, follow: bool = False) -> None:
    """Render `trainer.loop(...)`: a progress bar while the first pass catches up on a backlog;
    then, following, a live table of the model (a line every 2 s off a terminal); nothing but
    the end with --json."""
    from rtml_cli.train import Learned

    backlog = 0 if as_json else trainer.backlog()
    bar, task = _started_bar(console, "examples", f"train {trainer.name}", backlog)
    screen = None
    try:
        for event in events:
            if not as_json:
                say_diverged(trainer, console)
            if bar:
                if isinstance(event, Learned):
                    m = trainer.metrics.as_dict()
                    sick = ", [bold red]DIVERGED[/]" if trainer.learner.diverged else ""
                    bar.update(task, advance=event.n, status=f"MAE {_num(m['mae'])}, hit {_num(m['hit_rate'])}{sick}")
                    continue
                bar.stop()  # the first pass is over: the backlog is learned
                bar = None
            if follow and not as_json:
                screen = screen or _train_screen(trainer, console)
                screen.tick()
    finally:
        if bar:
            bar.stop()
        if screen:
            screen.close()


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


def _train_screen(trainer, console: Console) -> Screen:
    rate = Rate(lambda: trainer.learner.learned)
    return Screen(console, lambda: train_view(trainer, rate()), lambda: train_status(trainer, rate()))


def _last_stall(trainer) -> str:
    stalls = trainer.checkpointer.stalls_ms
    return f"{stalls[-1]:.2f} ms" if stalls else "-"


def train_status(trainer, rate: float) -> str:
    m = trainer.metrics.as_dict()
    return (
        f"{datetime.now().strftime('%H:%M:%S')} {trainer.learner.learned:,} learned ({rate:,.0f}/s), "
        f"v{trainer.version or 0}, MAE {_num(m['mae'])}, hit {_num(m['hit_rate'])}, "
        f"{trainer.backlog():,} behind, trained until {_when(trainer.trained_until)}, "
        f"last checkpoint stall {_last_stall(trainer)}" + (", DIVERGED" if trainer.learner.diverged else "")
    )


def train_view(trainer, rate: float):
    """The live table of `rtml train --follow`: the model and where its learning stands."""
    m = trainer.metrics.as_dict()
    window = trainer.opts.window
    table = _table(None, [("", "left"), ("", "left")])
    table.show_header = False
    health = "[bold red]DIVERGED[/]: predict keeps the last healthy version" if trainer.learner.diverged else "ok"
    for key, value in (
        ("checkpoint version", f"v{trainer.version}" if trainer.version else "none yet"),
        ("examples learned", f"{trainer.learner.learned:,} ({rate:,.0f}/s)"),
        ("not learned yet", f"{trainer.backlog():,} examples"),
        ("trained until (UTC)", _when(trainer.trained_until)),
        (f"MAE (last {window:,})", _num(m["mae"])),
        (f"hit rate (last {window:,})", _num(m["hit_rate"])),
        ("last checkpoint stall", _last_stall(trainer)),
        ("health", health),
    ):
        table.add_row(key, value)
    return _view(
        f"rtml train --follow: {trainer.name} ({trainer.spec.name}), {trainer.data_dir}",
        table,
        "metrics: prequential (each example predicted before it is learned); Ctrl-C writes a last checkpoint",
    )


def esc(text: str) -> str:
    """Text from data (a symbol, a path) shown in a rich table or message, never read as markup."""
    from rich.markup import escape

    return escape(text)


def _price(value) -> str:
    """A price as traded, to 6 significant digits (64988.7, not 6.499e+04)."""
    return f"{value:g}" if isinstance(value, (int, float)) else "-"


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
        ("trained until (UTC)", _when(summary["trained_until"])),
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


def checkpoints_table(rows: list[dict], width: int = 80):
    """Every checkpoint kept, split into parts that fit `width` (each repeating name and version)."""
    from rich.console import Group

    columns: list[tuple[str, JustifyMethod]] = [
        ("name", "left"),
        ("version", "right"),
        ("examples", "right"),
        ("trained until (UTC)", "left"),
        ("MAE", "right"),
        ("hit rate", "right"),
        ("size", "right"),
        ("status", "left"),
    ]
    cells = []
    for r in rows:
        m = r.get("metrics") or {}
        cells.append(
            [
                str(r["name"]),
                str(r["version"]),
                _count(r.get("examples_learned")),
                _when(r.get("trained_until")),
                _num(m.get("mae")),
                _num(m.get("hit_rate")),
                _count(r.get("size"), 1e3, " kB"),
                "diverged" if r.get("diverged") and r["status"] == "ok" else str(r["status"]),  # predict serves neither
            ]
        )
    return Group(*_fitted("checkpoints", columns, cells, 2, width))


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
    "in_sample",
    "latency_ms",
)


def show_predictions(predictor, events, follow: bool, console: Console, as_json: bool, jsonl: bool) -> None:
    """Render `predictor.loop(...)`. One-shot: a progress bar over the backlog. Following: a
    live table on a terminal, else a status line every 2 s. `jsonl` streams each published
    prediction to stdout."""
    from rtml_cli.predict import Notice, Published, Waiting

    board = view = None
    if follow and not as_json:
        board = PredictionBoard(predictor)
        rate = Rate(lambda: sum(predictor.predicted.values()))
        view = Screen(console, board.render, lambda: board.status_line(rate()))
    backlog = 0 if (follow or as_json) else predictor.backlog()
    bar, task = _started_bar(console, "predictions", "predict", backlog)
    try:
        for event in events:
            if isinstance(event, Published):
                if jsonl:
                    write_stdout(event.frame.select(PREDICTION_COLUMNS).write_ndjson())
                if bar:
                    bar.update(task, advance=event.frame.height)
                if board:
                    board.add(event.frame)
            elif isinstance(event, Waiting):
                console.print(
                    f"waiting for a checkpoint of {event.name!r} in {event.directory} (run `rtml train`)",
                    highlight=False,
                )
            elif isinstance(event, Notice):
                if event.problem:
                    console.print(f"[yellow]{esc(event.text)}[/]", highlight=False)
                elif not as_json:
                    console.print(f"{datetime.now().strftime('%H:%M:%S')} {event.text}", highlight=False, markup=False)
            if view:
                view.tick()
    finally:
        if bar:
            bar.stop()
        if view:
            view.close()


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
        p = self.predictor
        rate = sum(p.predicted.values()) / max(time.monotonic() - self.started, 1e-9)
        now = datetime.now(UTC)
        serving = []
        for s in p.slots:
            served = p._serving.get(s.name)
            created = _parse_iso(served.created_at) if served is not None else None
            age = f", written {_age((now - created).total_seconds())} ago" if created else ""
            serving.append(f"{s.name} v{s.latest.version}{age}" if s.latest else f"{s.name}: waiting for a checkpoint")
        table = _table(
            None,
            [
                ("symbol", "left"),
                ("model", "left"),
                ("bar (UTC)", "left"),
                ("prediction", "right"),
                ("v", "right"),
                ("made", "right"),
                ("latency", "right"),
            ],
        )
        for (sym, model), r in sorted(self.rows.items()):
            y = r["prediction"]
            arrow = "[green]▲[/]" if y > 0 else "[red]▼[/]" if y < 0 else "·"
            table.add_row(
                esc(sym),
                model,
                _when(r["ts"]),
                f"{arrow} {y:+.2e}",
                str(r["model_version"]),
                f"{_age(time.monotonic() - self.made[sym, model])} ago",
                _live_latency(r["latency_ms"]),
            )
        return _view(
            f"rtml predict --follow ({p.data_dir})",
            table,
            f"serving {'; '.join(serving)}. {sum(p.predicted.values()):,} predicted ({rate:,.1f}/s), "
            f"{p.backlog():,} feature rows not yet. latency: from the bar's end to its prediction, for live data",
        )


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
    table = _table(
        "rtml predict",
        [
            ("model", "left"),
            ("version", "right"),
            ("trained until (UTC)", "left"),
            ("predicted", "right"),
            ("versions served", "left"),
            ("skipped", "right"),
        ],
    )
    for name, m in summary["models"].items():
        served = m["versions_served"]
        table.add_row(
            name,
            str(m["version"] or "-"),
            _when(m["trained_until"]),
            f"{m['predicted_this_run']:,}",
            ", ".join(map(str, served[-6:])) + (" ..." if len(served) > 6 else "") or "-",
            str(len(m["skipped_checkpoints"])),
        )
    lat = summary["latency_ms"]
    latency = _live_latency(lat["median"])
    fits = sum(m.get("in_sample_this_run", 0) for m in summary["models"].values())
    table.caption = (
        f"{summary['predicted_this_run']:,} predictions in {summary['elapsed_s']:.2f}s, {summary['backlog']:,} behind"
        + (f", latency median {latency} (a bar's end to its prediction)" if latency != "-" else "")
        + (
            f"\n{fits:,} in sample (marked `in_sample`): made by a model that had already learned the bar's "
            "target, as a model catching up on history does; leave them out when you score"
            if fits
            else ""
        )
    )
    return table


# -- backtest ----------------------------------------------------------------------------------


def show_backtest(ds, opts, replays, console: Console, as_json: bool) -> dict:
    """Render `replays(progress)` (`backtest.replay_all` with a progress callback): a progress
    bar per job, with the time left, and a line per model replayed; return the scored result."""
    from rtml_cli.backtest import result_of

    started = time.perf_counter()
    done = []
    if not as_json:
        console.print(
            f"backtest: {ds.n:,} rows from {ds.source}, {len(ds.features)} features, label delay "
            f"{ds.delay} rows; models {', '.join(opts.models)}",
            highlight=False,
        )
    bars = progress_bar(console, "rows") if not as_json else None
    tasks: list[Any] = []

    def progress(jobs, rows: list[int]) -> None:
        if bars is None:
            return
        if not tasks:
            tasks.extend(bars.add_task(job.label, total=ds.n, status="") for job in jobs)
        for task, n in zip(tasks, rows, strict=True):
            bars.update(task, completed=n)

    with bars if bars is not None else nullcontext():
        for rep in replays(progress):
            done.append(rep)
            if not as_json:
                console.print(
                    f"  {rep.model}: {ds.n:,} rows in {rep.seconds:.1f}s, {len(rep.drift_rows)} drifts",
                    highlight=False,
                )
    return result_of(ds, opts, done, time.perf_counter() - started)


def backtest_tables(result: dict, width: int = 110) -> list:
    """What was run, the tables of `report.sections` and the warnings: the same story the
    HTML report tells. A table wider than `width` is split into parts that fit, each
    repeating the columns that say what a row is."""
    from rich.table import Table
    from rich.text import Text

    from rtml_cli.report import header_lines, sections

    head = Table(title=f"rtml backtest: {result['source']}", title_justify="left", show_header=False, box=None)
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    for key, value in header_lines(result):
        head.add_row(key, esc(value))
    out: list = [head]
    for sec in sections(result):
        columns: list[tuple[str, JustifyMethod]] = [
            (h, "left" if i < sec.keys else "right") for i, h in enumerate(sec.headers)
        ]
        styles = ["dim" if faint else None for faint in sec.dim or [False] * len(sec.rows)]
        out += _fitted(sec.title, columns, sec.rows, sec.keys, width, sec.caption or None, styles)
    for warning in result["warnings"]:
        out.append(Text(f"warning: {warning}", style="yellow"))
    return out


def _fitted(
    title: str,
    columns: list[tuple[str, JustifyMethod]],
    rows: list[list[str]],
    keys: int,
    width: int,
    caption: str | None = None,
    styles: list[str | None] | None = None,
) -> list:
    """A table of plain-text `rows` as one or more tables that fit `width` (see `_fit_columns`)."""
    parts = _fit_columns([h for h, _ in columns], rows, keys, width)
    out = []
    for n, cols in enumerate(parts):
        table = _table(
            title + (" (continued)" if n else ""),
            [columns[i] for i in cols],
            caption if n == len(parts) - 1 else None,
        )
        for row, style in zip(rows, styles or [None] * len(rows), strict=True):
            table.add_row(*(esc(row[i]) for i in cols), style=style)
        out.append(table)
    return out


def _fit_columns(headers: list[str], rows: list[list[str]], keys: int, width: int) -> list[list[int]]:
    """The columns of each part of a table split to fit `width` at their natural widths: the
    `keys` leading columns in every part, then as many others as fit."""
    from rich.cells import cell_len

    def need(i: int) -> int:  # the column's width, with its padding and border
        return max([cell_len(headers[i]), *(cell_len(r[i]) for r in rows)]) + 3

    base = 1 + sum(need(i) for i in range(keys))
    parts: list[list[int]] = []
    used = width + 1  # no part open yet
    for i in range(keys, len(headers)):
        if used + need(i) > width:
            parts.append(list(range(keys)))
            used = base
        parts[-1].append(i)
        used += need(i)
    return parts or [list(range(len(headers)))]


def status_view(snap: dict):
    """`rtml status` as tables: logs, stages, consumers, models, and a freshness line."""
    from rich.console import Group
    from rich.text import Text

    if snap["empty"]:
        ingest = snap["stages"]["ingest"]
        if ingest["running"]:  # started, nothing written yet: say what it is doing
            feed = f"; feed {ingest['feed']}" if ingest.get("feed") else ""
            return Text(f"{snap['data_dir']} has no data yet; ingest is running (pid {ingest['pid']}){feed}")
        return Text(f"{snap['data_dir']} has no data yet: start with `rtml ingest`")
    logs = _table("logs", [("log", "left"), ("symbols", "right"), ("rows", "right"), ("newest time (UTC)", "left")])
    for name, log in snap["logs"].items():
        logs.add_row(name, f"{log['partitions']:,}", f"{log['rows']:,}", _when(log["newest_ts"]))
    stages = _table("stages", [("stage", "left"), ("running", "left"), ("detail", "left")])
    for name, st in snap["stages"].items():
        detail = f"heartbeat {st['heartbeat_age_s']:,.1f} s ago" if "heartbeat_age_s" in st else ""
        if st.get("feed"):
            detail += f"; feed {esc(st['feed'])}"
        stages.add_row(name, f"pid {st['pid']}" if st["running"] else "[dim]no[/]", detail)
    consumers = _table(
        "consumers (behind their input)",
        [("consumer", "left"), ("rows behind", "right"), ("market time behind", "right")],
    )
    for name, c in snap["consumers"].items():
        if c is None:
            continue
        if "problem" in c:
            consumers.add_row(name, f"[yellow]{esc(c['problem'])}[/]", "")
            continue
        behind = "-" if c["behind_s"] is None else _age(max(0.0, c["behind_s"]))
        consumers.add_row(name, f"{c['behind_rows']:,}", behind)
    models = _table(
        "models (newest checkpoint)",
        [
            ("model", "left"),
            ("version", "right"),
            ("examples", "right"),
            ("trained until (UTC)", "left"),
            ("written", "left"),
            ("state", "left"),
        ],
    )
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
    topics = [log["kafka"] for log in snap["logs"].values() if "kafka" in log]
    if topics:  # the logs are Kafka topics: their messages per partition (rows of cut batches too)
        kafka = _table(
            "kafka topics",
            [("topic", "left"), ("partitions", "right"), ("messages", "right"), ("end offsets", "left")],
        )
        for t in topics:
            ends = {int(p): v["end"] for p, v in t["partitions"].items()}
            kafka.add_row(
                esc(t["topic"]),
                str(len(ends)),
                f"{sum(ends.values()):,}",
                " ".join(f"{p}:{e:,}" for p, e in sorted(ends.items())),
            )
        parts.insert(1, kafka)
    return Group(*parts, Text(fresh))


def watch_status(look, stop, interval: float, as_json: bool) -> None:
    """`rtml status --watch`: redraw in place on a terminal; else one snapshot per interval
    (a JSON object per line with --json)."""
    import json

    out = out_console()
    if as_json or not out.is_terminal or out.is_dumb_terminal:
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


def _when(iso: str | datetime | None) -> str:
    """A time (ISO text or a datetime) as `YYYY-MM-DD HH:MM:SS` (UTC), whole: never cut mid-way."""
    if isinstance(iso, datetime):
        value = iso
    elif not iso or not isinstance(iso, str):
        return "-"
    else:
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

    board = _RunBoard(sup, source, speed)
    live = None
    if not as_json and console.is_terminal and not console.is_dumb_terminal:
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
                lines = "\n".join(f"    {esc(line)}" for line in event.last_lines)
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
                board.look(sup.snapshot())
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
        from rich.text import Text

        up = time.monotonic() - self.sup.started
        pace = "" if self.speed is None else f" at {self.speed:g}x"
        head = Text(
            f"rtml run: {self.source}{pace}, {self.sup.data_dir}, up {_age(up)}"
            + (f"  [{note}]" if note else "  (Ctrl-C stops the stages in pipeline order)")
        )
        s = self.snap or {}
        consumers = s.get("consumers", {})
        stages = _table(
            "stages",
            [
                ("stage", "left"),
                ("state", "left"),
                ("restarts", "right"),
                ("behind (rows)", "right"),
                ("behind (market)", "right"),
            ],
        )
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
            market = _table(
                f"market ({self.rate:,.0f} ticks/s)",
                [
                    ("symbol", "left"),
                    ("last price", "right"),
                    ("ticks", "right"),
                    ("bars", "right"),
                    ("examples", "right"),
                    ("newest prediction", "left"),
                ],
            )
            for sym, t in logs["ticks"]["symbols"].items():
                preds = logs["predictions"]["symbols"].get(sym, {}).get("newest_predictions", {})
                shown = ", ".join(
                    f"{m} {p['prediction']:+.2e}" for m, p in preds.items() if p["prediction"] is not None
                )
                market.add_row(
                    esc(sym),
                    _price(t.get("last")),
                    f"{t['rows']:,}",
                    f"{logs['features']['symbols'].get(sym, {}).get('rows', 0):,}",
                    f"{logs['examples']['symbols'].get(sym, {}).get('rows', 0):,}",
                    shown or "-",
                )
            parts.append(market)
        if s.get("checkpoints"):
            models = _table(
                "models",
                [
                    ("model", "left"),
                    ("version", "right"),
                    ("examples learned", "right"),
                    ("rolling MAE", "right"),
                    ("hit rate", "right"),
                    ("trained until (UTC)", "left"),
                ],
            )
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

    stages = _table(
        f"rtml run: {summary['elapsed_s']:,.0f} s",
        [("stage", "left"), ("state", "left"), ("exit", "right"), ("restarts", "right"), ("log", "left")],
    )
    for name, st in summary["stages"].items():
        stages.add_row(
            name, st["state"], "-" if st["exit_code"] is None else str(st["exit_code"]), str(st["restarts"]), st["log"]
        )
    return Group(stages, status_view(summary["status"]))
