"""What the live status line says for a real feed and for a simulated clock."""

from datetime import UTC, datetime, timedelta

from rtml_cli.ingest import IngestSummary, SymbolStats
from rtml_cli.ui import ingest_status


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
