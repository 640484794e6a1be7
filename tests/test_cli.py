"""The command line: help, version, configuration precedence, errors, signals, crashes, compact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from rtml_cli import __version__
from rtml_cli.cli import cli
from rtml_cli.log import ParquetLog
from tests.conftest import assert_clean_error, rtml_process, stop_processes


def test_help_works_with_h_and_help_and_every_command_ends_with_an_example(rtml):
    top = rtml("-h", data=False)
    assert top.exit_code == 0 and "ingest" in top.output and "compact" in top.output
    for name in cli.commands:
        for flag in ("-h", "--help"):
            r = rtml(name, flag, data=False)
            assert r.exit_code == 0, r.output
            lines = [ln.strip() for ln in r.output.split("Options:")[0].splitlines() if ln.strip()]
            heading = max(i for i, ln in enumerate(lines) if ln.startswith("Example"))
            examples = lines[heading + 1 :]
            # each example is a command line (one continued with a backslash spans two)
            starts = [ln for i, ln in enumerate(examples) if i == 0 or not examples[i - 1].endswith("\\")]
            assert starts and all(ln.startswith("rtml " + name) for ln in starts), (name, lines[-3:])


def test_version(rtml):
    r = rtml("--version", data=False)
    assert r.exit_code == 0 and r.output.strip() == f"rtml, version {__version__}"
    proc = subprocess.run([sys.executable, "-m", "rtml_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--source", "kraken", "--speed", "5"], "--speed does not apply to --source kraken"),
        (["--path", "x.csv"], "--path only applies to --source replay"),
        (["--source", "replay"], "--source replay needs --path"),
        (["--source", "replay", "--path", "x.csv", "--seed", "3"], "--seed only applies to --source synthetic"),
        (["--url", "ws://127.0.0.1:1"], "--url only applies to the live feeds (--source kraken, binance"),
        (["--max-ticks", "0"], "--max-ticks"),
        (["--source", "bitstamp"], "--source"),
    ],
)
def test_conflicting_or_invalid_flags_are_usage_errors_naming_the_flags(rtml, args, fragment):
    assert_clean_error(rtml("ingest", *args), fragment, code=2)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--speed", "fast"], "--speed 'fast' is not a number"),
        (["--speed", "-2"], "--speed must be a positive number"),
        (["--start", "yesterday"], "--start 'yesterday' is not an ISO time"),
        (["--symbols", "BTC/USD,,ETH/USD"], "empty name"),
        (["--symbols", "BTC\x01USD"], "control characters"),
    ],
)
def test_bad_values_give_an_error_saying_what_to_do(rtml, args, fragment, data_dir):
    """A misused value is a usage error (exit 2) naming the flag; runtime errors exit 1."""
    assert_clean_error(rtml("ingest", *args), fragment, f"Invalid value for '{args[0]}'", code=2)
    assert not (data_dir / "ticks").exists() or not list((data_dir / "ticks").rglob("*.parquet"))


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {"RTML_DATA_DIR": ""} | (env or {})
    proc = rtml_process(args, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_rtml_toml_supplies_defaults_and_flags_and_env_win(tmp_path):
    (tmp_path / "rtml.toml").write_text('data_dir = "from-toml"\n\n[ingest]\nmax_ticks = 1234\nsymbols = ["ETH/USD"]\n')
    r = _run(["ingest", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["written"] == 1234 and list(summary["symbols"]) == ["ETH/USD"]
    assert Path(summary["data_dir"]) == Path("from-toml")
    assert ParquetLog(tmp_path / "from-toml", "ticks").row_count("ETH/USD") == 1234

    r = _run(["ingest", "--json", "--max-ticks", "100"], tmp_path)  # the flag wins over the file
    assert json.loads(r.stdout)["written"] == 100

    r = _run(["ingest", "--json"], tmp_path, {"RTML_DATA_DIR": str(tmp_path / "from-env")})
    assert json.loads(r.stdout)["data_dir"] == str(tmp_path / "from-env")  # env wins over the file


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, fragment",
    [
        ("max_ticks = [", "is not valid TOML"),
        ("[ingest]\nmax_tiks = 3\n", "[ingest] has unknown option 'max_tiks'"),
        ("[ingets]\n", "[ingets] is not an rtml command"),
        ("colour = 'red'\n", "unknown option 'colour'"),
    ],
)
def test_a_bad_rtml_toml_is_reported_clearly(tmp_path, content, fragment):
    (tmp_path / "rtml.toml").write_text(content)
    r = _run(["ingest", "--max-ticks", "10"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and fragment in r.stderr and "Traceback" not in r.stderr


def test_json_summary_is_the_only_thing_on_stdout(rtml):
    r = rtml("ingest", "--max-ticks", "5000", "--json")
    assert r.exit_code == 0
    summary = json.loads(r.stdout)
    assert summary["written"] == 5000 and summary["stopped_by"] == "--max-ticks"
    assert sum(s["written"] for s in summary["symbols"].values()) == 5000


def test_a_second_ingest_into_a_locked_log_says_who_holds_it(rtml, data_dir):
    with ParquetLog(data_dir, "ticks").writer():
        assert_clean_error(rtml("ingest", "--max-ticks", "10"), "another rtml process", "is writing")


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_flushes_what_was_received_and_exits_zero(data_dir, sig):
    # Nothing is flushed by size or time before the signal: whatever is in the log got
    # there through the shutdown flush.
    proc = rtml_process(
        [
            "ingest",
            "--speed",
            "600",
            "--flush-every",
            "100000000",
            "--flush-interval",
            "3600",
            "--json",
            "--data-dir",
            str(data_dir),
        ]
    )
    try:
        _wait_for(lambda: (data_dir / "ticks" / ".writer.lock").exists())
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "signal"
    assert summary["written"] > 0
    assert ParquetLog(data_dir, "ticks").read_all().height == summary["written"]


@pytest.mark.slow
def test_kill_9_loses_at_most_the_unflushed_batch_and_the_log_stays_usable(data_dir, rtml):
    proc = rtml_process(
        ["ingest", "--speed", "3000", "--flush-interval", "0.05", "--json", "--data-dir", str(data_dir)]
    )
    log = ParquetLog(data_dir, "ticks")
    try:
        _wait_for(lambda: sum(len(log.parts(s)) for s in log.partitions()) >= 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    before = log.read_all()
    assert before.height > 0
    for _, part in before.group_by("symbol"):
        assert part["offset"].sort().to_list() == list(range(part.height))
    r = rtml("ingest", "--max-ticks", "1000", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quarantined_total"] == 0
    after = log.read_all()
    assert after.height == before.height + 1000
    assert not [p for p in (data_dir / "ticks").rglob("*") if ".tmp-" in p.name]
    assert after.select(pl.struct("symbol", "trade_id").is_unique().all()).item()


@pytest.mark.slow
def test_compact_merges_parts_and_readers_see_the_same_rows(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "20000", "--flush-every", "1000").exit_code == 0
    log = ParquetLog(data_dir, "ticks")
    before = log.read_all().sort("symbol", "offset")
    parts_before = sum(len(log.parts(s)) for s in log.partitions())
    r = rtml("compact", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert {x["symbol"] for x in results} == set(log.partitions()) and {x["log"] for x in results} == {"ticks"}
    assert all(x["parts_after"] == 1 for x in results)
    assert parts_before > 3 * len(results)
    assert log.read_all().sort("symbol", "offset").equals(before)
    again = rtml("compact")
    assert again.exit_code == 0 and "nothing to compact" in again.output


@pytest.mark.slow
def test_compact_all_logs_predictions_too_and_readers_resume_where_they_were(rtml, trained_dir):
    assert rtml("predict").exit_code == 0
    before = {n: ParquetLog(trained_dir, n).read_all().sort("symbol", "offset") for n in ("features", "predictions")}
    r = rtml("compact", "--json")
    assert r.exit_code == 0, r.output
    assert {x["log"] for x in json.loads(r.stdout)} == {"ticks", "features", "examples", "predictions"}
    for name, frame in before.items():
        assert ParquetLog(trained_dir, name).read_all().sort("symbol", "offset").equals(frame)
    assert json.loads(rtml("predict", "--json").stdout)["predicted_this_run"] == 0  # nothing repeated


def test_compact_without_a_log_is_a_clear_error(rtml, data_dir):
    data_dir.mkdir()
    assert_clean_error(rtml("compact"), "there are no logs", "rtml ingest")
    assert_clean_error(rtml("compact", "--name", "ticks"), "there is no 'ticks' log", "rtml ingest")


def test_environment_problems_are_errors_not_tracebacks(rtml, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = rtml("ingest", "--max-ticks", "10", "--data-dir", str(afile / "sub"), data=False)
    assert_clean_error(r, "Not a directory")
    assert_clean_error(rtml("ingest", "--start", "2300-01-01"), "outside 1971..2200", code=2)
    assert_clean_error(rtml("ingest", "--seed", "-1"), "--seed", code=2)
    assert_clean_error(rtml("compact", "--name", ".."), "--name", code=2)


@pytest.mark.slow
def test_followers_started_before_the_market_wait_for_their_input_then_run(tmp_path):
    """features, train and predict --follow used to exit 1 on an empty data directory."""
    d = tmp_path / "data"
    common = ["--follow", "--poll", "0.1", "--json", "--data-dir", str(d)]
    procs = {
        "features": rtml_process(["features", *common]),
        "train": rtml_process(["train", "--checkpoint-every", "20", *common]),
        "predict": rtml_process(["predict", *common]),
    }
    try:
        time.sleep(3)
        assert all(p.poll() is None for p in procs.values()), "a follower gave up on an empty data directory"
        ingest = rtml_process(["ingest", "--max-ticks", "20000", "--speed", "3000", "--data-dir", str(d)])
        assert ingest.wait(120) == 0, ingest.stderr.read()
        predictions = ParquetLog(d, "predictions")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not predictions.partitions():
            time.sleep(0.2)
    finally:
        stop_processes(*procs.values())
    out = {name: p.communicate() for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, (name, out[name][1])
        assert "waiting for the " in out[name][1], (name, out[name][1])
    assert json.loads(out["train"][0])["examples_learned"] > 0
    assert json.loads(out["predict"][0])["predicted_this_run"] > 0


@pytest.mark.slow
def test_a_follower_stopped_while_waiting_exits_0_and_says_so(tmp_path):
    p = rtml_process(["features", "--follow", "--poll", "0.05", "--json", "--data-dir", str(tmp_path / "none")])
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert json.loads(out)["waiting_for"].startswith("the ticks log in")


@pytest.mark.slow
@pytest.mark.parametrize("command", [["models"], ["status"], ["checkpoints"]])
def test_a_reader_that_goes_away_ends_the_output_quietly(trained_dir, command):
    """`rtml models | head -1` printed "Error: Broken pipe" and exit 1; rich tables exited 1."""
    where = [] if command == ["models"] else ["--data-dir", str(trained_dir)]
    p = subprocess.Popen(
        [sys.executable, "-m", "rtml_cli", *command, *where], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # gone before rtml writes a byte
    err = p.stderr.read()
    assert p.wait(30) == 128 + signal.SIGPIPE, err
    assert err == b""


def test_rtml_toml_sets_repeatable_and_renamed_options(examples_dir):
    """`[backtest] model = [...]`, `from`, `[train] param = [...]` and `[predict] name = [...]`
    were refused or ignored: rtml.toml keys are the flags' names, and a repeatable flag takes a list."""
    from click.testing import CliRunner

    from rtml_cli.cli import _param_names, cli
    from rtml_cli.config import default_map

    config = {
        "backtest": {"model": ["linear", "sgd"], "from": "2026-01-01T00:30:00", "refresh": [1, 60]},
        "train": {"param": ["ridge=2"], "checkpoint-every": 500},
        "predict": {"name": ["a", "b"]},
    }
    dm = default_map(config, _param_names())
    assert dm["backtest"]["models"] == ["linear", "sgd"] and dm["backtest"]["start"] == "2026-01-01T00:30:00"
    assert dm["backtest"]["refresh"] == "1,60"
    assert dm["train"]["params"] == ["ridge=2"] and dm["train"]["checkpoint_every"] == 500
    assert dm["predict"]["names"] == ["a", "b"]
    r = CliRunner().invoke(cli, ["backtest", "--json", "--data-dir", str(examples_dir)], default_map=dm)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert {row["model"] for row in result["results"]} >= {"linear", "sgd"}
    examples = ParquetLog(examples_dir, "examples").read_all(columns=["ts"])
    after = examples.filter(pl.col("ts") >= datetime(2026, 1, 1, 0, 30, tzinfo=UTC)).height
    assert result["rows"] == after < examples.height  # --from applied


def test_help_fits_an_80_column_terminal_and_lists_commands_in_pipeline_order():
    """Help was wrapped at 100 columns whatever the terminal, breaking words at 80."""
    from click.testing import CliRunner

    from rtml_cli.cli import cli

    runner = CliRunner(env={"COLUMNS": "80"})
    top = runner.invoke(cli, ["--help"], prog_name="rtml").output
    listed = [line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[:7] == ["ingest", "features", "train", "predict", "backtest", "run", "status"]
    for name in ["", *cli.commands]:
        out = runner.invoke(cli, [name, "--help"] if name else ["--help"], prog_name="rtml").output
        long = [line for line in out.splitlines() if len(line) > 80]
        assert not long, (name, long[:2])


def test_a_signal_arriving_while_the_main_thread_holds_the_stop_event_s_lock_still_stops():
    """Seen on a loaded machine: SIGTERM reached `train --follow` while its main thread was
    inside `stop.wait()` holding the Event's lock; the handler's `stop.set()` then waited for
    that lock forever. (And a handler that printed failed when it came halfway through an
    import.) Here the handler runs just so, twice, in the thread that holds the lock."""
    script = (
        "import io, signal\n"
        "from rich.console import Console\n"
        "from rtml_cli.cli import _Stopper\n"
        "out = io.StringIO()\n"
        "s = _Stopper(Console(file=out))\n"
        "with s.stop._cond:\n"
        "    s._handle(signal.SIGTERM, None)\n"
        "    s._handle(signal.SIGINT, None)\n"
        "assert s.stop.wait(10)\n"
        "assert out.getvalue().count('stopping') == 1, out.getvalue()\n"
        "print('stopped')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "stopped\n", r.stderr
