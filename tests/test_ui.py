"""What the live status line says for a real feed and for a simulated clock."""

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from rtml_cli.ingest import IngestSummary, SymbolStats
from rtml_cli.ui import ingest_status
from tests.conftest import Terminal


def summary_with_last_ts(last_ts: datetime | None) -> IngestSummary:
    s = IngestSummary(source="kraken", data_dir="d", written=1500)
    if last_ts is not None:
        s.symbols["BTC/USD"] = SymbolStats(written=1500, last_ts=last_ts, last_price=65000.5)
    s.quarantined["bad_side"] = 2
    return s


def test_a_real_feed_shows_its_lag_behind_the_wall_clock():
    line = ingest_status(summary_with_last_ts(datetime.now(UTC) - timedelta(seconds=3)), 250.0)
    assert "1,500 ticks (250/s), 2 quarantined, lag 3." in line
    assert "BTC/USD 65000.5" in line


def test_a_simulated_clock_shows_market_time_not_a_lag():
    ahead = datetime.now(UTC) + timedelta(hours=2)
    summary = summary_with_last_ts(ahead)
    summary.source = "synthetic"
    line = ingest_status(summary, 10.0)
    assert f"market time {ahead:%Y-%m-%d %H:%M}" in line and "lag" not in line


def test_before_the_first_trade_it_says_so():
    assert "waiting for trades" in ingest_status(summary_with_last_ts(None), 0.0)


def test_prediction_latency_is_shown_only_where_it_means_something():
    """The predict screen showed '331d' on history and '-1793s' on a fast simulated market."""
    from rtml_cli.ui import _live_latency

    assert _live_latency(850.0) == "850 ms"  # live: a bar predicted 0.85 s after its end
    assert _live_latency(331 * 86_400_000.0) == "-"  # a replay of last year
    assert _live_latency(-1_793_000.0) == "-"  # a simulated clock running ahead
    assert _live_latency(None) == "-"


def test_while_not_connected_the_line_says_what_the_connection_does():
    line = ingest_status(summary_with_last_ts(None), 0.0, "retrying in 2 s: connection refused")
    assert "retrying in 2 s: connection refused" in line and "waiting for trades" not in line


def _assert_fits(out: str, what: str, columns: int = 80) -> None:
    """Every line within `columns`, nothing cut short with an ellipsis, every date whole."""
    long = [line for line in out.splitlines() if len(line) > columns]
    assert not long, (what, long[:2])
    assert "…" not in out, (what, out)
    for date, rest in re.findall(r"(\d{4}-\d\d-\d\d)(.{0,9})", out):
        assert re.match(r"[ T]\d\d:\d\d:\d\d", rest), (what, date + rest, out)


@pytest.mark.slow
def test_every_command_s_output_fits_80_columns_and_no_time_is_cut(trained_dir):
    """At 80 columns, timestamps were cut to "2026-01-…" and columns to "predi…"."""
    from click.testing import CliRunner

    from rtml_cli.cli import cli

    runner = CliRunner(env={"COLUMNS": "80", "RTML_DATA_DIR": str(trained_dir)})
    for args in (
        ["ingest", "--max-ticks", "20000"],
        ["features"],
        ["train"],
        ["train", "--model", "sgd", "--name", "a-challenger-with-a-long-name"],
        ["predict", "--name", "linear", "--name", "a-challenger-with-a-long-name"],
        ["checkpoints"],
        ["status"],
        ["compact"],
        ["backtest", "--model", "linear", "--refresh", "500"],
    ):
        r = runner.invoke(cli, args, prog_name="rtml")
        assert r.exit_code == 0, (args, r.output)
        _assert_fits(r.output, " ".join(args))


def _screen(t: Terminal) -> str:
    return "\n".join(line for line in t.lines() if line.strip())


@pytest.mark.slow
def test_the_follow_screens_redraw_in_place_on_an_80_column_terminal(tmp_path):
    """Three of the four live screens were log lines scrolling forever, wrapped at 80 columns."""
    d = str(tmp_path / "data")
    follow = ["--follow", "--poll", "0.2", "--data-dir", d]
    screens = {
        "ingest (synthetic)": Terminal(["ingest", "--speed", "600", "--duration", "6", "--data-dir", d]),
        "features --follow": Terminal(["features", *follow]),
        "train --follow": Terminal(["train", "--checkpoint-every", "20", *follow]),
        "predict --follow": Terminal(["predict", *follow]),
    }
    try:
        assert screens["ingest (synthetic)"].proc.wait(120) == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not re.search("[▲▼·] [+-]", screens["predict --follow"].text):
            time.sleep(0.2)
        time.sleep(1)  # a few more redraws
    finally:
        codes = {name: t.stop() for name, t in screens.items()}
    for name, t in screens.items():
        assert codes[name] == 0, (name, _screen(t)[-3000:])
        shown = _screen(t)
        assert f"rtml {name}" in shown, (name, shown[-3000:])
        assert len(re.findall(r"\x1b\[\d*A", t.raw)) >= 5, (name, "not redrawn in place")  # cursor up: redraw
        _assert_fits(shown, name)
    assert re.search(
        r"BTC/USD │ linear │ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d │ [▲▼·] [+-]\d", _screen(screens["predict --follow"])
    )
    assert "serving linear v" in _screen(screens["predict --follow"])
    assert re.search(r"examples learned +│ [1-9][\d,]* \(", _screen(screens["train --follow"]))


@pytest.mark.slow
def test_the_run_dashboard_fits_an_80_column_terminal(tmp_path):
    t = Terminal(["run", "--speed", "600", "--duration", "10", "--data-dir", str(tmp_path / "data")])
    try:
        code = t.proc.wait(120)
    finally:
        t.stop()
    shown = _screen(t)
    assert code == 0, shown[-3000:]
    assert len(re.findall(r"\x1b\[\d*A", t.raw)) >= 5, "not redrawn in place"
    for part in ("stages", "market (", "models", "freshness: newest trade", "rtml run: synthetic at 600x"):
        assert part in shown, (part, shown[-3000:])
    _assert_fits(shown, "run")


@pytest.mark.slow
def test_models_wraps_whole_words_on_a_terminal_and_keeps_one_line_each_in_a_pipe():
    t = Terminal(["models"])
    try:
        assert t.proc.wait(60) == 0
    finally:
        t.stop()
    _assert_fits(_screen(t), "models")
    assert "adapts to drift" in " ".join(_screen(t).split())
    piped = subprocess.run([sys.executable, "-m", "rtml_cli", "models"], capture_output=True, text=True, timeout=60)
    first = piped.stdout.splitlines()[0]
    assert first.startswith("linear (regressor): ") and "adapts to drift" in first  # one line, for grep


def test_a_symbol_that_looks_like_markup_is_shown_as_it_is():
    """Symbols come from data: rich read "[/b]" in one as markup and raised, ending the screen."""
    from rtml_cli.ui import features_table, ingest_table, ingest_view
    from tests.conftest import render_text

    summary = summary_with_last_ts(datetime.now(UTC))
    summary.symbols["X[/b]Y[bold]"] = summary.symbols.pop("BTC/USD")
    sym = {"bars_emitted": 1, "examples_emitted": 0, "late_ticks": 2, "features_rows": 1, "examples_rows": 0}
    built = {
        "params": {"bar_s": 60, "horizon": 5, "target": "logret"},
        "symbols": {"X[/b]Y[bold]": {**sym, "closed_until": None, "gap_bars_skipped": 3}},
        "ticks_read": 9,
        "elapsed_s": 0.1,
        "late_ticks": 2,
    }
    for view in (ingest_view(summary, 1.0), ingest_table(summary), features_table(built)):
        assert "X[/b]Y[bold]" in render_text(view, width=100)
