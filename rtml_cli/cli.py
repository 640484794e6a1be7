"""The `rtml` command line: parse options, call one library function, render the result.

Heavy libraries (polars, duckdb, river) are imported inside the commands that use them,
so `rtml --help` stays instant.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from threading import Event, Lock, Thread

import click

from rtml_cli import __version__
from rtml_cli.errors import ConfigError, RtmlError, SourceError
from rtml_cli.logs import LOG_NAMES
from rtml_cli.sources import LIVE, SOURCES
from rtml_cli.sources.layouts import FORMATS

# Help fits the terminal (up to 100 columns); the CLI reference (docs/cli.md) is rendered at
# a fixed 100 so that a test can check it.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# `rtml --help` lists the commands in pipeline order, then the tools
ORDER = [
    "ingest",
    "features",
    "train",
    "predict",
    "backtest",
    "run",
    "status",
    "checkpoints",
    "models",
    "compact",
    "archive",
]


class RtmlGroup(click.Group):
    """Turns rtml's own errors into `Error: ...` and exit status 1, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader of our output went away (`rtml models | head -1`): end quietly with
            # the status a Unix tool killed by SIGPIPE has. (SIGPIPE itself stays ignored, as
            # Python sets it, so that a live feed's closed socket is an error to handle, not
            # death.) Whatever the command was doing has finished unwinding by now.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        except RtmlError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # the file system said no: a path, a permission, a full disk
            where = f" ({exc.filename})" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}; check --data-dir and the paths given") from None


@click.group(cls=RtmlGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="rtml")
def cli() -> None:
    """rtml: real-time machine learning on market ticks with incremental re-training.

    Stages talk through Parquet logs in a data directory (default ./data, or
    $RTML_DATA_DIR, or data_dir in ./rtml.toml).

    \b
    Example:
        rtml ingest --source synthetic --max-ticks 100000
    """


# -- shared options ----------------------------------------------------------------------------


def data_dir_option(f):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("data"),
        envvar="RTML_DATA_DIR",
        show_default=True,
        show_envvar=True,
        help="Where the logs live.",
    )(f)


def log_option(f):
    return click.option(
        "--log",
        "log_url",
        default=None,
        envvar="RTML_LOG",
        show_envvar=True,
        metavar="DIR|kafka://HOST:PORT",
        help="Where the logs are: a directory (default: --data-dir) or kafka://HOST:PORT[,...][?prefix=rtml.&partitions=N].",
    )(f)


def share_options(f):
    f = click.option(
        "--partitions",
        "partition_list",
        default=None,
        metavar="0,4,8",
        help="Kafka: consume only these partitions of the topics.",
    )(f)
    return click.option(
        "--member",
        default=None,
        metavar="I/N",
        help="Kafka: consume the I-th of N shares of the partitions (N processes split the symbols).",
    )(f)


def _logs(data_dir: Path, log_url: str | None, member: str | None = None, partition_list: str | None = None):
    from rtml_cli.kafka import parse_share
    from rtml_cli.logs import LogStore

    return LogStore(data_dir, log_url, parse_share(member, partition_list))


def _reach(logs, stop: Event, console, duration: float | None = None) -> bool:
    """With the logs on Kafka: wait until the brokers answer, saying so; False when a signal came
    first, a LogError when --duration ran out first."""
    import time

    if not logs.is_kafka:
        return True
    said: list[str] = []

    def waiting(why: str) -> None:
        if not said:
            from rtml_cli.ui import esc

            console.print(f"[yellow]waiting: {esc(why)}; retrying every second[/]")
        said.append(why)

    deadline = time.monotonic() + duration if duration is not None else None
    reached = logs.wait(stop, waiting, deadline)
    if reached and said:
        console.print("Kafka answers: starting", highlight=False)
    return reached


def log_name_option(help_text: str):
    """`--name`: one of the logs, or all of them."""
    return click.option(
        "--name", "log_name", type=click.Choice(["all", *LOG_NAMES]), default="all", show_default=True, help=help_text
    )


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")(f)


def checked(parse: Callable[[str], object]):
    """A click callback: check an option's value with `parse` when it is given, so that a
    misused value is a usage error naming the flag (exit 2); the command gets the text."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return None
        try:
            parse(value)
        except RtmlError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


def _bar(text: str) -> object:
    from rtml_cli.features import parse_bar

    return parse_bar(text)


def _refresh(text: str) -> object:
    from rtml_cli.backtest import parse_refresh

    return parse_refresh(text)


def _time(text: str) -> object:
    from rtml_cli.backtest import parse_time

    return parse_time(text)


def symbols_option(help_text: str):
    def decorate(f):
        return click.option("--symbols", metavar="A,B", default=None, help=help_text, callback=checked(parse_symbols))(
            f
        )

    return decorate


def parse_symbols(value: str | None) -> list[str] | None:
    if value is None:
        return None
    from rtml_cli.log import check_symbol

    names = [s.strip() for s in value.split(",")]
    if any(n == "" for n in names):
        raise ConfigError(f"--symbols {value!r} has an empty name; write them like BTC/USD,ETH/USD")
    return [check_symbol(n) for n in names]


def parse_speed(value: str) -> float | None:
    """'max' -> None (as fast as possible), else a positive factor."""
    if value.strip().lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise ConfigError(f"--speed {value!r} is not a number; use e.g. 1, 60 or max") from None
    if not speed > 0 or speed == float("inf"):
        raise ConfigError(f"--speed must be a positive number or max, not {value!r}")
    return speed


def parse_start(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--start {value!r} is not an ISO time; use e.g. 2026-01-01T00:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if not datetime(1971, 1, 1, tzinfo=UTC) <= dt <= datetime(2200, 1, 1, tzinfo=UTC):
        raise ConfigError(f"--start {value!r} is outside 1971..2200")
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


class _Stopper:
    """Ctrl-C and SIGTERM ask the run to stop; it then flushes what it holds and exits 0."""

    def __init__(self, console, saying: str = "stopping: flushing what has been received..."):
        self.stop = Event()
        self.console = console
        self.saying = saying
        self._said = Lock()  # one message however many signals come

    def __enter__(self) -> Event:
        # polars hooks SIGINT when it is first imported and then raises KeyboardInterrupt
        # from inside its operations; importing it first lets our handler take SIGINT over.
        import polars  # noqa: F401

        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self.stop

    def _handle(self, signum, frame):
        # The handler runs in the main thread between any two bytecodes: inside the stop
        # Event's wait holding its lock (set() then waited forever: a follower never stopped
        # on SIGTERM), or halfway through an import rich needs (printing then failed). So it
        # only starts a thread, which says so and sets the Event once the main thread lets it.
        Thread(target=self._stopping, name="stop", daemon=True).start()

    def _stopping(self) -> None:
        with self._said:
            if not self.stop.is_set():
                self.console.print(f"[yellow]{self.saying}[/]")
            self.stop.set()

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _await_input(awaited: Callable[[], str | None], stop: Event, poll: float, console) -> str | None:
    """--follow on a data directory its input is not in yet: wait for it, saying what for.
    Returns None once it is there, else (a signal came first) what it was waiting for."""
    what = awaited()
    if what is None:
        return None
    console.print(f"waiting for {what}", highlight=False)
    while not stop.wait(poll):
        if awaited() is None:
            console.print("found it: starting", highlight=False)
            return None
    return what


def _stopped_waiting(what: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"stopped": "by a signal while waiting", "waiting_for": what}, indent=2))
    else:
        click.echo(f"stopped while waiting for {what}", err=True)


# -- ingest ------------------------------------------------------------------------------------

SYNTHETIC_DEFAULT_TICKS = 1_000_000


@cli.command(context_settings=CONTEXT)
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default="synthetic",
    show_default=True,
    help="Where trades come from: the simulator, trade files, or a live exchange feed.",
)
@symbols_option(
    "Symbols, comma-separated. synthetic: which markets to simulate [BTC/USD,ETH/USD,SOL/USD]; "
    "live feeds: in the exchange's own spelling, kraken BTC/USD, binance and binance-futures BTCUSDT, "
    "coinbase BTC-USD (the default); replay: keep only these."
)
@click.option("--max-ticks", type=click.IntRange(min=1), default=None, help="Stop after writing this many ticks.")
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many seconds."
)
@click.option(
    "--flush-every",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Write a part every N ticks...",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="...or every S seconds, whichever comes first.",
)
@click.option(
    "--speed",
    default="max",
    show_default=True,
    callback=checked(parse_speed),
    help="synthetic/replay clock: X times wall time, or max.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=42,
    show_default=True,
    help="synthetic: random seed; the same seed gives the same ticks.",
)
@click.option(
    "--start",
    default=None,
    callback=checked(parse_start),
    help="synthetic: simulated start time (ISO). [default: where the log ends, else now when paced, else 2026-01-01]",
)
@click.option(
    "--regime-minutes",
    type=click.FloatRange(min=1),
    default=720.0,
    show_default=True,
    help="synthetic: mean length of a market regime.",
)
@click.option(
    "--regime",
    type=click.Choice(["switching", "momentum", "reversion", "random_walk"]),
    default="switching",
    show_default=True,
    help="synthetic: hold one market regime throughout (a stationary market), or switch.",
)
@click.option("--path", default=None, help="replay: a trade file or a glob of them (CSV, .csv.gz, .zip, Parquet).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    metavar="FORMAT",
    default="auto",
    show_default=True,
    help=f"replay: the files' layout: {', '.join(FORMATS)}.",
)
@click.option(
    "--symbol", default=None, help="replay: symbol for files without a symbol column (default: from the file name)."
)
@click.option("--url", default=None, help="live feeds: the WebSocket endpoint, instead of the exchange's own.")
@data_dir_option
@log_option
@json_option
def ingest(
    source,
    symbols,
    max_ticks,
    duration,
    flush_every,
    flush_interval,
    speed,
    seed,
    start,
    regime_minutes,
    regime,
    path,
    fmt,
    symbol,
    url,
    data_dir,
    log_url,
    as_json,
):
    """Write trades into the ticks log, validated and de-duplicated.

    Bad records (missing or unparseable fields, non-positive or non-finite price or qty, a
    timestamp far in the future, a repeated trade id) go to DATA_DIR/quarantine/ with their
    reason. Ctrl-C or SIGTERM flushes what has been received and exits 0.

    At --speed max without --max-ticks or --duration, synthetic generates 1,000,000 ticks.

    \b
    Examples:
        rtml ingest --max-ticks 500000
        rtml ingest --speed 60 --duration 30
        rtml ingest --source replay --path 'dumps/BTCUSDT-trades-*.csv.gz'
        rtml ingest --source kraken --symbols BTC/USD,ETH/USD
        rtml ingest --source binance --symbols BTCUSDT,ETHUSDT
        rtml ingest --source coinbase --symbols BTC-USD --duration 3600
    """
    from rtml_cli import ui
    from rtml_cli.ingest import IngestOptions, IngestSummary, ingest_loop, open_source

    ctx = click.get_current_context()
    _only_for(
        ctx,
        source,
        {
            "seed": "synthetic",
            "start": "synthetic",
            "regime_minutes": "synthetic",
            "regime": "synthetic",
            "path": "replay",
            "fmt": "replay",
            "symbol": "replay",
            "url": "live",
        },
    )
    if source in LIVE and _given(ctx, "speed"):
        raise click.UsageError(f"--speed does not apply to --source {source}: a live feed runs at its own pace")
    if source == "replay" and not path:
        raise click.UsageError("--source replay needs --path FILE_OR_GLOB")
    pace = parse_speed(speed)
    wanted = parse_symbols(symbols)
    if source == "synthetic" and pace is None and max_ticks is None and duration is None:
        max_ticks = SYNTHETIC_DEFAULT_TICKS

    console = ui.err_console()
    opts = IngestOptions(flush_every, flush_interval, max_ticks, duration, wanted if source == "replay" else None)
    logs = _logs(data_dir, log_url)
    with _Stopper(console) as stop:
        if not _reach(logs, stop, console, duration):
            return _stopped_waiting("Kafka", as_json)
        src, batches = open_source(
            source,
            data_dir,
            stop,
            symbols=wanted,
            speed=pace,
            seed=seed,
            start_ns=parse_start(start),
            regime_minutes=regime_minutes,
            regime=None if regime == "switching" else regime,
            max_ticks=max_ticks,
            path=path,
            fmt=fmt,
            symbol=symbol,
            url=url,
            on_event=lambda msg: console.print(f"[yellow]{ui.esc(msg)}[/]"),
            logs=logs,
        )
        summary = IngestSummary(source=src.name, data_dir=str(data_dir))
        events = ingest_loop(data_dir, src, opts, stop, summary, batches, logs)
        # a progress bar when the amount of work is known and not paced; else a status line
        total = src.total if pace is None else None
        ui.show_ingest(summary, events, total, "bytes" if source == "replay" else "ticks", console, as_json, src)
    if source in LIVE and not getattr(src, "subscribed_once", True):
        why = getattr(src, "last_problem", None) or "stopped before the exchange acknowledged the subscription"
        raise SourceError(f"never connected to the feed ({why}); nothing was received. Check the network and --url")
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return

    out = ui.out_console()
    out.print(ui.ingest_table(summary))
    if summary.quarantined:
        out.print(ui.quarantine_table(summary))
        out.print(f"see {data_dir / 'quarantine'}/ for the rejected records and their reasons")
    for gap in summary.gaps[:20]:
        out.print(f"[yellow]gap:[/] {ui.esc(gap)}")


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


def _only_for(ctx: click.Context, source: str, owners: dict[str, str]) -> None:
    """Options that belong to one source ("live": to every live feed) refused with another."""
    for name, owner in owners.items():
        if owner != source and not (owner == "live" and source in LIVE) and _given(ctx, name):
            flag = "--format" if name == "fmt" else "--" + name.replace("_", "-")
            where = f"the live feeds (--source {', '.join(LIVE)})" if owner == "live" else f"--source {owner}"
            raise click.UsageError(f"{flag} only applies to {where}, not --source {source}")


# -- features ----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--follow", is_flag=True, help="Keep building as ticks arrive, until Ctrl-C.")
@click.option(
    "--bar", default="1m", show_default=True, callback=checked(_bar), help="Bar length, 1s..1d (e.g. 10s, 1m, 5m, 1h)."
)
@click.option("--horizon", type=click.IntRange(min=1), default=5, show_default=True, help="Label horizon h in bars.")
@click.option(
    "--target",
    type=click.Choice(["logret", "sign"]),
    default="logret",
    show_default=True,
    help="logret: log return from close t to close t+h; sign: its sign.",
)
@click.option(
    "--sql",
    "sql_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Your own feature query over the `bars` view (see docs/features.md).",
)
@symbols_option("Only these symbols (default: all in the ticks log).")
@click.option(
    "--lookback",
    type=click.IntRange(min=31),
    default=60,
    show_default=True,
    help="Earlier bars given to the feature query for its windows.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="--follow: close a bar this many seconds after its end even without a later tick.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="--follow: seconds between looks at the ticks log when idle.",
)
@click.option("--rebuild", is_flag=True, help="Delete the features and examples logs and build them again.")
@data_dir_option
@log_option
@share_options
@json_option
def features(
    follow,
    bar,
    horizon,
    target,
    sql_file,
    symbols,
    lookback,
    grace,
    poll,
    rebuild,
    data_dir,
    log_url,
    member,
    partition_list,
    as_json,
):
    """Turn ticks into closed bars, features and delayed-label examples (DuckDB SQL).

    Appends one row per closed bar to the features log, and, once bar t+h has closed, the
    same row plus its target to the examples log. Incremental and exactly-once: run it
    again, or keep it running with --follow, and it continues where it stopped.

    \b
    Examples:
        rtml features
        rtml features --follow --bar 10s --horizon 6
        rtml features --sql my_features.sql --rebuild
    """
    from rtml_cli import ui
    from rtml_cli.features import (
        FeatureBuilder,
        FeatureSpec,
        awaited_input,
        default_sql,
        dry_run,
        parse_bar,
        remove_built,
    )

    sql = default_sql()
    if sql_file is not None:
        try:
            sql = sql_file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --sql {sql_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--sql {sql_file} is not a UTF-8 text file of SQL") from None
    spec = FeatureSpec(bar_s=parse_bar(bar), horizon=horizon, target=target, lookback=lookback, sql=sql)
    logs = _logs(data_dir, log_url, member, partition_list)
    console = ui.err_console()
    with _Stopper(console, "stopping: finishing the step in progress...") as stop:
        if not _reach(logs, stop, console):
            return _stopped_waiting("Kafka", as_json)
        if rebuild:
            dry_run(spec)  # a broken --sql costs nothing: the logs are deleted only for a query that works
            remove_built(data_dir, logs)
        if follow and (what := _await_input(lambda: awaited_input(data_dir, logs), stop, poll, console)):
            return _stopped_waiting(what, as_json)
        with FeatureBuilder(data_dir, spec, parse_symbols(symbols), logs=logs) as builder:
            events = builder.loop(stop, follow, poll, grace)
            summary = ui.show_features(builder, events, follow, console, as_json, stop)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        ui.out_console().print(ui.features_table(summary))


# -- train, models, checkpoints ------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--model", default="linear", show_default=True, help="A spec from `rtml models`, or module:factory.")
@click.option("--name", default=None, help="Checkpoint directory name. [default: the model's name]")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a model parameter (repeatable).")
@click.option("--follow", is_flag=True, help="Keep learning as examples arrive, until Ctrl-C.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Checkpoint every N examples...",
)
@click.option(
    "--checkpoint-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="...or every S seconds, whichever comes first.",
)
@click.option("--keep", type=click.IntRange(min=1), default=10, show_default=True, help="Checkpoint versions to keep.")
@symbols_option("Only examples of these symbols (default: all).")
@click.option(
    "--on-drift",
    type=click.Choice(["ignore", "reset"]),
    default="ignore",
    show_default=True,
    help="What a drift found by ADWIN on the error does to the model.",
)
@click.option("--window", type=click.IntRange(min=1), default=500, show_default=True, help="Rolling metrics window.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Start a new model although checkpoints exist, none of which loads (another key or River version; "
    "those are kept).",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="--follow: seconds between looks at the examples log when idle.",
)
@data_dir_option
@log_option
@share_options
@json_option
def train(
    model,
    name,
    params,
    follow,
    checkpoint_every,
    checkpoint_interval,
    keep,
    symbols,
    on_drift,
    window,
    fresh,
    poll,
    data_dir,
    log_url,
    member,
    partition_list,
    as_json,
):
    """Learn the examples log with a River model, publishing verified checkpoints.

    Each example is predicted before it is learned (prequential), so the rolling MAE, RMSE
    and hit rate in the checkpoints are out-of-sample. Resumes from the newest valid
    checkpoint and learns every example after it exactly once, also after kill -9.

    \b
    Examples:
        rtml train
        rtml train --follow --checkpoint-every 1000
        rtml train --model arf --param n_models=5 --name arf5
    """
    from rtml_cli import ui
    from rtml_cli.models import parse_params
    from rtml_cli.train import Trainer, TrainOptions, awaited_input

    opts = TrainOptions(
        model,
        name,
        parse_params(params),
        checkpoint_every,
        checkpoint_interval,
        keep,
        parse_symbols(symbols),
        on_drift,
        window,
        fresh,
    )
    logs = _logs(data_dir, log_url, member, partition_list)
    console = ui.err_console()
    with _Stopper(console, "stopping: writing a checkpoint of what was learned...") as stop:
        if not _reach(logs, stop, console):
            return _stopped_waiting("Kafka", as_json)
        if follow and (what := _await_input(lambda: awaited_input(data_dir, logs), stop, poll, console)):
            return _stopped_waiting(what, as_json)
        with Trainer(data_dir, opts, logs) as trainer:
            for problem in trainer.skipped:
                console.print(f"[yellow]skipped a checkpoint: {ui.esc(problem)}[/]")
            ui.show_training(trainer, trainer.loop(stop, follow, poll), console, as_json, follow)
    summary = trainer.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        ui.out_console().print(ui.train_table(summary))


@cli.command(context_settings=CONTEXT)
@json_option
def models(as_json):
    """List the model specs `rtml train --model` accepts.

    \b
    Example:
        rtml models
    """
    from rtml_cli.models import SPECS

    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "defaults": s.defaults,
            "accepts": s.accepts(),
            "description": s.description,
        }
        for s in SPECS.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    import shutil

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None

    def say(text: str, indent: str = "") -> None:  # on a terminal, wrapped at its width (whole words)
        if width is None:  # a pipe: one line each, for grep
            click.echo(indent + text)
        else:
            click.echo(click.wrap_text(text, width, initial_indent=indent, subsequent_indent=" " * 14))

    for r in rows:
        say(f"{r['name']} ({r['kind']}): {r['description']}")
        if r["defaults"]:
            say(", ".join(f"{k}={v}" for k, v in r["defaults"].items()), "    defaults: ")
        say(", ".join(r["accepts"]), "    --param:  ")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default="synthetic",
    show_default=True,
    help="Where trades come from (see `rtml ingest`).",
)
@click.option("--path", default=None, help="replay: the trade file(s), a glob allowed.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    metavar="FORMAT",
    default="auto",
    show_default=True,
    help="replay: the files' layout (see `rtml ingest`).",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0.001),
    default=None,
    help="synthetic/replay: X times wall time. [default: 60 for synthetic, as fast as it goes for replay]",
)
@click.option("--duration", type=click.FloatRange(min=0), default=None, help="Stop after S seconds (default: Ctrl-C).")
@click.option("--max-ticks", type=click.IntRange(min=1), default=None, help="Ingest at most N trades, then drain.")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="SPEC",
    help="Train and serve this model (repeatable). [default: linear]",
)
@symbols_option("Symbols (see `rtml ingest --symbols`).")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="train: examples per checkpoint (and one at least every 3 s while learning).",
)
@click.option("--no-restart", is_flag=True, help="End the run (exit 1) when a stage dies, instead of restarting it.")
@data_dir_option
@log_option
@json_option
def run(
    source,
    path,
    fmt,
    speed,
    duration,
    max_ticks,
    models,
    symbols,
    checkpoint_every,
    no_restart,
    data_dir,
    log_url,
    as_json,
):
    """Run the whole pipeline: ingest, features, train and predict, live.

    Each stage is its own process on one data directory, as in production: `ingest`,
    `features --follow`, one `train --follow` per --model and `predict --follow`. A live
    dashboard shows the market, what each stage has built, each model's version and error,
    the newest predictions, each stage's lag behind the one before it, and the pipeline's
    freshness. A stage that dies is shown with its last log lines and restarted with
    back-off. Each stage's output goes to <data-dir>/logs/. Ctrl-C (or --duration) stops the
    stages in pipeline order, each once it has caught up, and prints a summary.

    \b
    Examples:
        rtml run                      # the simulated market at 60x, until Ctrl-C
        rtml run --speed 3000 --duration 60 --model linear --model sgd
        rtml run --source kraken --symbols BTC/USD,ETH/USD
        rtml run --source replay --path 'dumps/*.csv.gz' --speed 100
    """
    from rtml_cli import ui
    from rtml_cli.models import resolve
    from rtml_cli.run import Supervisor, stage_specs

    names = list(dict.fromkeys(models or ["linear"]))
    for m in names:
        resolve(m)  # a bad name is an error now, not a crashing trainer
    if source == "replay" and not path:
        raise click.UsageError("--source replay needs --path", ctx=click.get_current_context())
    if source in LIVE and speed is not None:
        raise click.UsageError("--speed is for synthetic and replay; a live feed runs at its own pace")
    if source == "synthetic" and speed is None:
        speed = 60.0
    parse_symbols(symbols)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = _logs(data_dir, log_url)
    specs = stage_specs(data_dir, source, names, symbols, speed, path, fmt, checkpoint_every, max_ticks, log_url)
    sup = Supervisor(data_dir, specs, restart=not no_restart, logs=logs)
    console = ui.err_console()
    with _Stopper(console, "stopping the stages in pipeline order...") as stop:
        ui.show_run(sup, sup.loop(stop, duration), console, as_json, source, speed)
    summary = sup.summary()
    from rtml_cli.status import snapshot

    summary["status"] = snapshot(data_dir, logs)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        ui.out_console().print(ui.run_summary(summary))
    if sup.failed is not None:
        raise RtmlError(
            f"{sup.failed.stage} died (exit {sup.failed.exit_code}) and --no-restart was given; "
            f"its log: {summary['stages'][sup.failed.stage]['log']}"
        )


@cli.command(context_settings=CONTEXT)
@click.option("--watch", is_flag=True, help="Keep the view up to date until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, help="--watch: seconds between looks."
)
@data_dir_option
@log_option
@json_option
def status(watch, interval, data_dir, log_url, as_json):
    """Where the pipeline stands: logs, running stages, lags, models, freshness.

    Per log: symbols, rows, newest time and offset. Per consumer (the feature builder, each
    trainer, each predicted model): how far behind its input it is, in rows and in market
    time. Per model: the newest checkpoint, what it learned, whether it verifies. Which
    stages run now, and the pipeline's freshness: newest trade to newest prediction (market
    time) and that prediction's age (wall time). Reads only; safe while the stages run.
    Exit 0 (also on an empty data directory), 1 if the data directory does not exist.

    \b
    Examples:
        rtml status
        rtml status --watch
        rtml status --json
    """
    from rtml_cli import ui
    from rtml_cli.status import snapshot

    logs = _logs(data_dir, log_url)
    if not watch:
        snap = snapshot(data_dir, logs)
        if as_json:
            click.echo(json.dumps(snap, indent=2))
        else:
            ui.out_console().print(ui.status_view(snap))
        return
    console = ui.err_console()
    with _Stopper(console) as stop:
        ui.watch_status(lambda: snapshot(data_dir, logs), stop, interval, as_json)


@cli.command(context_settings=CONTEXT)
@click.option("--name", default=None, help="Only this model's checkpoints (default: all).")
@data_dir_option
@json_option
def checkpoints(name, data_dir, as_json):
    """List checkpoints with examples learned, trained-until, metrics and verification.

    \b
    Example:
        rtml checkpoints --name linear
    """
    from rtml_cli import ui
    from rtml_cli.train import list_checkpoints

    if not data_dir.is_dir():
        raise ConfigError(f"there is no data directory {data_dir}; check --data-dir")
    rows = list_checkpoints(data_dir, name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no checkpoints in {data_dir / 'checkpoints'} yet: run `rtml train`")
        return

    out = ui.out_console()
    out.print(ui.checkpoints_table(rows, out.width))


# -- predict -----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="A model to serve: its checkpoint directory name. Repeat it to serve a champion and "
    "challengers side by side. [default: linear]",
)
@click.option(
    "--follow", is_flag=True, help="Keep predicting new bars and swapping newer checkpoints in, until Ctrl-C."
)
@click.option(
    "--from",
    "start",
    type=click.Choice(["earliest", "latest"]),
    default="earliest",
    show_default=True,
    help="Where a model with no predictions yet starts: the first feature row, or the next new one.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between looks at the features log and the checkpoints when no filesystem "
    "notification comes (network filesystems send none).",
)
@click.option("--no-notify", is_flag=True, help="Poll only; use no filesystem notifications.")
@symbols_option("Only feature rows of these symbols (default: all).")
@click.option("--jsonl", is_flag=True, help="Also stream each prediction to stdout as one JSON object per line.")
@data_dir_option
@log_option
@share_options
@json_option
def predict(names, follow, start, poll, no_notify, symbols, jsonl, data_dir, log_url, member, partition_list, as_json):
    """Predict each new feature row with the newest verified checkpoint, into the predictions log.

    Each model keeps its own offsets in the features log: a restart resumes right after
    the last prediction published, also after kill -9. With --follow, a newer checkpoint
    is verified and loaded beside the serving model and swapped in between two rows; one
    that fails verification is reported once and skipped while the old model serves.

    \b
    Examples:
        rtml predict
        rtml predict --follow --name linear --name arf --jsonl
    """
    from rtml_cli import ui
    from rtml_cli.predict import PredictOptions, Predictor, awaited_input, require_models

    opts = PredictOptions(list(names) or ["linear"], parse_symbols(symbols), start, poll, not no_notify)
    logs = _logs(data_dir, log_url, member, partition_list)
    console = ui.err_console()
    with _Stopper(console, "stopping: publishing what was predicted...") as stop:
        if not _reach(logs, stop, console):
            return _stopped_waiting("Kafka", as_json)
        if follow and (what := _await_input(lambda: awaited_input(data_dir, logs), stop, poll, console)):
            return _stopped_waiting(what, as_json)
        with Predictor(data_dir, opts, logs) as predictor:
            predictor.load_all()
            for problem in predictor.reports():
                console.print(f"[yellow]{ui.esc(problem)}[/]", highlight=False)
            if not follow:
                require_models(predictor)
            ui.show_predictions(predictor, predictor.loop(stop, follow), follow, console, as_json, jsonl)
    summary = predictor.summary()
    if as_json:
        text = json.dumps(summary, indent=2)
        click.echo(text, err=jsonl)  # stdout is the predictions' when streaming them
    else:
        (console if jsonl else ui.out_console()).print(ui.predict_table(summary))


# -- backtest ----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="SPEC",
    help="A model spec (see `rtml models`) or module:factory; repeat it to compare models. [default: linear]",
)
@click.option(
    "--refresh",
    default="1",
    show_default=True,
    metavar="R,R,...",
    callback=checked(_refresh),
    help="Serving refresh intervals, comma-separated: bars for the examples log, rows for a --table; "
    "1 (the learner itself) and never (frozen after --warmup) are always included.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Rows learned before scoring starts; the frozen baseline is the model after them.",
)
@click.option(
    "--fee-bps",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Trading cost in basis points per unit of position changed.",
)
@click.option(
    "--band",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Dead band: no position while |prediction| <= band.",
)
@symbols_option("Only these symbols (default: all).")
@click.option(
    "--from", "start", metavar="TS", default=None, callback=checked(_time), help="Only rows at or after this time."
)
@click.option("--to", "end", metavar="TS", default=None, callback=checked(_time), help="Only rows before this time.")
@click.option(
    "--table",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Backtest a Parquet or CSV table of yours instead of the examples log.",
)
@click.option("--target", default=None, metavar="COL", help="--table: the column to predict.")
@click.option("--ts", default=None, metavar="COL", help="--table: a time column (rows are replayed in its order).")
@click.option(
    "--delay",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="--table: rows after which a row's label is known.",
)
@click.option(
    "--price",
    default=None,
    metavar="COL",
    help="--table: a price column; positions are marked to market on it, row by row.",
)
@click.option(
    "--returns",
    type=click.Choice(["log", "simple", "percent", "none"]),
    default=None,
    help="--table without --price: the target is the next row's return of this kind, which a "
    "position held one row earns. [default: none (no trading)]",
)
@click.option(
    "--periods-per-year",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="For the annualised Sharpe ratio. [default: from the bar, or --ts; else 252]",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write metrics.json, predictions.parquet, charts and report.html here.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a parameter of every --model (repeatable), as for `rtml train`.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Parallel processes: one per model; beyond that, with --by-symbol, a model's symbols split among "
    "them, and then its refresh intervals.",
)
@click.option(
    "--by-symbol",
    is_flag=True,
    help="One model per symbol, learning only that symbol's rows: a different experiment from the default "
    "(one model learns every symbol), with its own results.",
)
@data_dir_option
@log_option
@json_option
def backtest(
    models,
    refresh,
    warmup,
    fee_bps,
    band,
    symbols,
    start,
    end,
    table,
    target,
    ts,
    delay,
    price,
    returns,
    periods_per_year,
    report_dir,
    params,
    jobs,
    by_symbol,
    data_dir,
    log_url,
    as_json,
):
    """Replay history predict-then-learn, against baselines, and show what model staleness costs.

    Every row is predicted before it is learned, and a label is learned only once it would
    have been known (the horizon for the examples log, --delay rows for a table). Each model
    is scored as a live model (refresh 1), with serving copies refreshed every R bars, and
    frozen after --warmup; beside the zero and last-target baselines.

    \b
    Examples:
        rtml backtest --refresh 1,60,1440,never
        rtml backtest --model linear --model arf --jobs 2 --report out/
        rtml backtest --by-symbol --jobs 2
        rtml backtest --table returns.parquet --target next_ret --ts date \\
            --returns simple
        rtml backtest --table bars.parquet --target fwd_5 --ts time --delay 5 \\
            --price close
    """
    from rtml_cli import backtest as bt
    from rtml_cli import ui
    from rtml_cli.models import parse_params

    if table is None and (target or ts or delay or price or returns):
        raise ConfigError(
            "--target, --ts, --delay, --price and --returns describe a --table; the examples log "
            "knows its own (and trades on its bars' closes)"
        )
    opts = bt.BacktestOptions(
        list(models) or ["linear"],
        bt.parse_refresh(refresh),
        warmup,
        fee_bps,
        band,
        parse_symbols(symbols),
        start,
        end,
        table,
        target,
        ts,
        delay,
        returns,
        periods_per_year,
        jobs,
        price=price,
        params=parse_params(params),
        by_symbol=by_symbol,
    )
    bt.check_models(opts)
    console = ui.err_console()
    with _Stopper(console, "stopping the backtest...") as stop:
        ds = bt.load_table(opts) if table is not None else bt.load_examples(data_dir, opts, _logs(data_dir, log_url))
        try:
            result = ui.show_backtest(
                ds, opts, lambda progress: bt.replay_all(ds, opts, stop, progress), console, as_json
            )
        except bt.Stopped as exc:  # asked to stop: not an error
            click.echo(str(exc), err=True)
            return
    if report_dir is not None:
        from rtml_cli.report import write_report

        written = write_report(result, ds, report_dir)
        if not as_json:
            console.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)
    from rtml_cli.report import public

    if as_json:
        click.echo(json.dumps(public(result), indent=2))
        return

    out = ui.out_console()
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = ui.out_console(width=110)  # the tables' natural width, in a pipe or a file (unless COLUMNS says)
    for table_ in ui.backtest_tables(result, out.width):
        out.print(table_)


# -- compact -----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@log_name_option("Which log to compact (all: every log there is; one in use by a running stage is skipped).")
@symbols_option("Only these partitions (default: all).")
@click.option(
    "--target-rows",
    type=click.IntRange(min=2),
    default=1_000_000,
    show_default=True,
    help="Merge runs of small parts into parts of up to this many rows.",
)
@data_dir_option
@log_option
@json_option
def compact(log_name, symbols, target_rows, data_dir, log_url, as_json):
    """Merge small parts of a log into bigger ones, keeping every row's offset.

    Live ingest flushes often and leaves many small parts; readers are unaffected by
    compaction (they see every row exactly once throughout), but fewer files read faster.
    Takes the log's writer lock: stop ingest first, or run it between ingests.

    \b
    Example:
        rtml compact --name ticks --target-rows 500000
    """
    from rtml_cli.errors import LockedError

    store = _logs(data_dir, log_url)
    if store.is_kafka:
        raise ConfigError("compact merges Parquet parts; a Kafka topic's size is the brokers' retention settings")
    names = list(LOG_NAMES) if log_name == "all" else [log_name]
    logs = [store.open(n) for n in names if store.open(n).exists()]
    if not logs:
        what = "are no logs" if log_name == "all" else f"is no {log_name!r} log"
        raise ConfigError(f"there {what} in {store.where}; run `rtml ingest` first or check --data-dir")
    results, skipped = [], []
    for log in logs:
        wanted = [s for s in (parse_symbols(symbols) or log.partitions()) if s in log.partitions()]
        try:
            with log.writer() as writer:
                results += [{"log": log.name, **writer.compact(sym, target_rows).__dict__} for sym in wanted]
        except LockedError as exc:
            if log_name != "all":
                raise
            skipped.append(f"{log.name} (in use: {exc})")
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    changed = [r for r in results if r["parts_after"] != r["parts_before"]]
    if not changed:
        click.echo(f"nothing to compact: every partition is in parts of up to {target_rows:,} rows already")
    for r in changed:
        click.echo(
            f"{r['log']}/{r['symbol']}: {r['parts_before']} parts -> {r['parts_after']} ({r['rows']:,} rows rewritten)"
        )


# -- archive -----------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@log_name_option("Which log to copy.")
@click.option("--reverse", is_flag=True, help="Copy the Parquet logs of --data-dir into Kafka instead (a backfill).")
@click.option("--follow", is_flag=True, help="Keep copying what arrives, until Ctrl-C.")
@click.option(
    "--poll", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="--follow: seconds between copies."
)
@symbols_option("Only these symbols (default: all).")
@data_dir_option
@log_option
@json_option
def archive(log_name, reverse, follow, poll, symbols, data_dir, log_url, as_json):
    """Copy the Kafka logs (--log kafka://...) into the Parquet logs of --data-dir.

    History stays queryable with DuckDB, polars and `rtml backtest` while the live path runs
    on Kafka. Rows keep their offsets; each batch is published atomically, so an archive
    stopped at any moment (Ctrl-C, kill -9) goes on where it stopped, copying nothing twice.
    --reverse replays the Parquet logs into Kafka. A destination that is not a copy of the
    source (its newest row differs) is an error.

    \b
    Examples:
        rtml archive --log kafka://broker:9092 --data-dir history
        rtml archive --log kafka://broker:9092 --data-dir history --follow
        rtml archive --log kafka://broker:9092 --data-dir history --reverse
    """
    from rtml_cli import ui
    from rtml_cli.archive import copy_log
    from rtml_cli.logs import LogStore

    kafka = _logs(data_dir, log_url)
    if not kafka.is_kafka:
        raise ConfigError("archive copies between Kafka and Parquet: give --log kafka://HOST:PORT (or set RTML_LOG)")
    parquet = LogStore(data_dir)
    src, dst = (parquet, kafka) if reverse else (kafka, parquet)
    names = list(LOG_NAMES) if log_name == "all" else [log_name]
    wanted = parse_symbols(symbols)
    console = ui.err_console()
    copied: dict[str, dict[str, int]] = {}
    with _Stopper(console, "stopping: finishing the batch in progress...") as stop:
        if not _reach(kafka, stop, console):
            return _stopped_waiting("Kafka", as_json)
        if reverse:  # the build record first: a Kafka holding another build refuses the backfill
            _copy_build(kafka, parquet, reverse, data_dir)
        while True:
            for name in names:
                if not src.open(name).exists():
                    continue
                for c in copy_log(src.open(name), dst.open(name), wanted, stop):
                    mine = copied.setdefault(name, {})
                    mine[c.symbol] = mine.get(c.symbol, 0) + c.rows
                    if not as_json:
                        console.print(
                            f"{name}/{ui.esc(c.symbol)}: {c.rows:,} rows, up to offset {c.last_offset:,}",
                            highlight=False,
                        )
            if not reverse:
                _copy_build(kafka, parquet, reverse, data_dir)
            if not follow or stop.wait(poll):
                break
    summary = {
        "from": src.where,
        "to": dst.where,
        "rows": sum(n for per in copied.values() for n in per.values()),
        "logs": copied,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"copied {summary['rows']:,} rows from {src.where} to {dst.where}")


def _copy_build(kafka, parquet, reverse: bool, data_dir: Path) -> None:
    """The record of how the features were built goes with them (backtest, train and predict
    read it): into an archive's state directory, or onto Kafka for a backfill."""
    from rtml_cli.build_state import publish_build, read_build, shared_build, write_record

    if reverse:
        build = read_build(data_dir)
        if build is None:
            return
        if build.build_id is None:
            raise ConfigError(
                f"the features in {data_dir} were built before builds had ids; rebuild them "
                "(`rtml features --rebuild`) before replaying them into Kafka"
            )
        shared = shared_build(kafka)
        if shared is None:
            doc = json.loads((data_dir / "state" / "features.json").read_text())
            publish_build(kafka, build.build_id, doc["params"])
        elif shared["build_id"] != build.build_id:
            raise ConfigError(
                f"{kafka.where} holds another build of the features than {data_dir}; replay into another "
                "--log prefix, or rebuild there first"
            )
    elif parquet.open("features").exists() and (shared := shared_build(kafka)) is not None:
        write_record(data_dir, shared, kafka.where)


# -- entry point -------------------------------------------------------------------------------


def _param_names() -> dict[str, dict[str, tuple[str, bool]]]:
    """Per command, the keys `rtml.toml` may use: each option's flag names (`--from` is
    `from`) and its Python name, with whether it repeats."""
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for name, cmd in cli.commands.items():
        keys: dict[str, tuple[str, bool]] = {}
        for p in cmd.params:
            if not isinstance(p, click.Option) or not p.name or p.name in ("help", "version"):
                continue
            spec = (p.name, bool(p.multiple))
            keys[p.name] = spec
            for flag in p.opts:
                if flag.startswith("--"):
                    keys[flag[2:].replace("-", "_")] = spec
        out[name] = keys
    return out


def main() -> None:
    import faulthandler

    from rtml_cli.config import default_map, load_config

    # `kill -USR1 <pid>` prints where every thread of a running stage is, to its stderr
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        defaults = default_map(load_config(), _param_names())
    except RtmlError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli(default_map=defaults, prog_name="rtml")
