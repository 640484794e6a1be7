"""The market simulator: reproducible, continuing, paced, and carrying real concept drift."""

from __future__ import annotations

import itertools
import json
from threading import Event

import numpy as np
import polars as pl
import pytest

from rtml_cli.log import ParquetLog
from rtml_cli.sources import IDLE_BATCH_S, TickBatch, pace
from rtml_cli.sources.synthetic import REGIMES, Simulator, SyntheticSource

START = 1_767_225_600 * 1_000_000_000
COLS = ["ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]


def ticks(data_dir) -> pl.DataFrame:
    return ParquetLog(data_dir, "ticks").read_all().sort("symbol", "offset")


@pytest.mark.slow
def test_the_same_seed_gives_the_same_ticks_whatever_the_flush_size(rtml, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, flush in ((a, "100000"), (b, "777"), (c, "100000")):
        seed = "9" if d is c else "7"
        r = rtml(
            "ingest",
            "--max-ticks",
            "20000",
            "--seed",
            seed,
            "--flush-every",
            flush,
            "--json",
            "--data-dir",
            str(d),
            data=False,
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["written"] == 20000
    ta, tb, tc = ticks(a), ticks(b), ticks(c)
    assert ta.height == 20000
    assert ta.select(COLS).equals(tb.select(COLS))
    assert not ta.select(COLS).equals(tc.select(COLS))
    assert len(list((b / "ticks").rglob("*.parquet"))) > len(list((a / "ticks").rglob("*.parquet")))


def test_ticks_follow_the_data_contract(rtml, data_dir):
    r = rtml("ingest", "--max-ticks", "30000", "--symbols", "BTC/USD,ETH/USD", "--json")
    assert r.exit_code == 0, r.output
    df = ticks(data_dir)
    assert df.schema["ts"] == pl.Datetime("ns", "UTC") and df.schema["recv_ts"] == pl.Datetime("ns", "UTC")
    assert set(df["symbol"].unique()) == {"BTC/USD", "ETH/USD"}
    assert (df["price"] > 0).all() and (df["qty"] > 0).all()
    assert set(df["side"].unique()) == {"buy", "sell"}
    assert df.select(pl.struct("symbol", "trade_id").is_unique().all()).item()
    assert (df["recv_ts"] >= df["ts"]).all()
    for _, part in df.group_by("symbol"):
        assert part["offset"].to_list() == list(range(part.height))
        assert part["ts"].is_sorted()
    # prices sit on the symbol's tick grid: BTC/USD trades in 0.1 steps
    btc = df.filter(pl.col("symbol") == "BTC/USD")["price"].to_numpy()
    assert np.allclose(np.round(btc, 1), btc, rtol=0, atol=1e-9)
    # the default start of a fast run on an empty log is 2026-01-01T00:00:00Z
    first_ns = df["ts"].dt.epoch("ns").min()
    assert START <= first_ns < START + 1_000_000_000


def test_a_second_run_continues_the_market_instead_of_repeating_it(rtml, data_dir):
    first = json.loads(rtml("ingest", "--max-ticks", "10000", "--json").stdout)
    second = json.loads(rtml("ingest", "--max-ticks", "10000", "--json").stdout)
    assert first["written"] == second["written"] == 10000
    assert second["quarantined_total"] == 0
    df = ticks(data_dir)
    assert df.height == 20000
    for sym in first["symbols"]:
        assert second["symbols"][sym]["first_ts"] > first["symbols"][sym]["last_ts"]
        part = df.filter(pl.col("symbol") == sym)
        assert part["offset"].to_list() == list(range(part.height))
        # the price continues from where it was, not from the starting level again
        jump = abs(second["symbols"][sym]["last_price"] / first["symbols"][sym]["last_price"] - 1)
        assert jump < 0.2


def _bars(sim: Simulator, blocks: int) -> pl.DataFrame:
    """One-minute bars of the first symbol: close, 5-bar order-flow imbalance, the next 5 bars'
    return, and the regime at the bar's close."""
    parts = [sim.block() for _ in range(blocks)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    df = pl.DataFrame(
        {"ts": cols["ts"], "sym": cols["sym"], "price": cols["price"], "qty": cols["qty"], "buy": cols["buy"]}
    ).filter(pl.col("sym") == 0)
    signed = pl.when("buy").then(pl.col("qty")).otherwise(-pl.col("qty"))
    bars = (
        df.with_columns(bar=(pl.col("ts") - START) // 60_000_000_000)
        .group_by("bar")
        .agg(close=pl.col("price").last(), flow=signed.sum(), volume=pl.col("qty").sum())
        .sort("bar")
        .with_columns(
            ofi_5=pl.col("flow").rolling_sum(5) / pl.col("volume").rolling_sum(5),
            next_5=pl.col("close").log().shift(-5) - pl.col("close").log(),
        )
    )
    regime = np.concatenate(sim.trace.regime)
    return bars.with_columns(
        regime=pl.Series([REGIMES[r] for r in regime[(bars["bar"].to_numpy() + 1) * 60 - 1]])
    ).drop_nulls()


@pytest.mark.slow
def test_the_simulated_market_has_regimes_whose_predictability_flips_sign():
    """Concept drift an online model can exploit: the same feature predicts opposite moves.

    Order flow reveals each symbol's pressure in every regime; in the momentum regime the
    price follows it (flow predicts the next minutes' return with a positive sign), in the
    reversion regime the pressure pushed the price off fair value and it comes back (a
    negative sign); a market held in the random walk has nothing to predict.
    """
    sim = Simulator(["BTC/USD"], seed=3, start_ns=START, regime_minutes=360, trace=True)
    bars = _bars(sim, blocks=6 * 24 * 6)  # six simulated days
    corr = {r: (g.select(pl.corr("ofi_5", "next_5")).item(), g.height) for (r,), g in bars.group_by("regime")}
    assert set(corr) == {"momentum", "reversion"}  # a switching market moves between these two
    assert min(n for _, n in corr.values()) > 1500
    assert corr["momentum"][0] > 0.08 and corr["reversion"][0] < -0.06
    # a frozen model fitted on momentum bars gets the sign wrong in reversion bars
    mom, rev = bars.filter(pl.col("regime") == "momentum"), bars.filter(pl.col("regime") == "reversion")
    beta = np.polyfit(mom["ofi_5"].to_numpy(), mom["next_5"].to_numpy(), 1)[0]
    assert np.corrcoef(beta * rev["ofi_5"].to_numpy(), rev["next_5"].to_numpy())[0, 1] < 0
    walk = _bars(Simulator(["BTC/USD"], seed=3, start_ns=START, regime="random_walk", trace=True), blocks=6 * 24 * 3)
    assert abs(walk.select(pl.corr("ofi_5", "next_5")).item()) < 0.05


@pytest.mark.slow
def test_the_market_is_calibrated_to_crypto():
    """Annualised volatility 40-90%, fat tails, volatility that clusters, no drift, and an
    oracle (the simulator's own hidden state) that hits the sign of the next five minutes
    55-60% of the time: the figures of `tools/market_calibration.py`, on a shorter run."""
    from rtml_cli.sources.synthetic import DEFAULT_SYMBOLS, oracle
    from tools.market_calibration import describe, simulate

    sim, closes = simulate(seed=11, days=6)
    for row in describe(closes, DEFAULT_SYMBOLS):
        assert 0.40 <= row["annual_vol"] <= 0.90, row
        assert 0.0007 <= row["mean_abs_5m"] <= 0.0025, row  # real BTC: roughly 0.1-0.2%
        assert row["kurtosis_1m"] > 1.0, row  # fat tails
        assert row["acf_abs_1m_lag60"] > 0.05, row  # volatility clusters
        assert abs(row["acf_1m_lag1"]) < 0.1, row  # little to read off the last bar alone
    o = oracle(sim, closes, bar_s=60, horizon=5)
    assert 0.55 <= o["hit_rate"] <= 0.60, o
    # no drift: over many symbol-days, the mean one-day log return is within noise of zero
    daily = np.log(closes[:, 1440::1440] / closes[:, :-1440:1440]).ravel()
    assert abs(daily.mean()) < 3 * daily.std(ddof=1) / np.sqrt(len(daily))


def _batch(ts_seconds: list[float | None]) -> TickBatch:
    """Trades at these seconds after START (a seconds value below -START/1e9 + 1 is 1970)."""
    frame = pl.DataFrame(
        {"ts": [None if t is None else START + int(t * 1e9) for t in ts_seconds]}, schema={"ts": pl.Int64}
    ).select(pl.col("ts").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"))
    return TickBatch(frame, raw=pl.lit(""), where=pl.lit(""), progress=len(ts_seconds))


def _paced(batches: list[TickBatch], speed: float = 10.0) -> list[tuple[float, list[float]]]:
    """(wall seconds since the start, the trades' seconds after START) of each release, on a fake clock."""
    now = [100.0]

    def wait(seconds):
        now[0] += max(seconds, 0.001)

    out = []
    for b in pace(iter(batches), speed=speed, stop=Event(), clock=lambda: now[0], wait=wait):
        out.append(
            (now[0] - 100.0, [(t - START) / 1e9 for t in b.frame["ts"].dt.epoch("ns").fill_null(START).to_list()])
        )
    return out


def test_pace_releases_each_trade_when_scaled_wall_time_reaches_it():
    """--speed X: a fake clock shows no trade leaves before (ts - t0) / X seconds have passed."""
    now = [100.0]
    waits = []

    def wait(seconds):
        waits.append(seconds)
        now[0] += max(seconds, 0.001)

    stop = Event()
    batches = [_batch([0, 1, 2, 10]), _batch([10.5, 30])]
    released, idle = [], []
    for out in pace(iter(batches), speed=10.0, stop=stop, clock=lambda: now[0], wait=wait):
        if out.frame.height == 0:  # a pause: an empty batch, so that ingest can flush on time
            idle.append(now[0])
            continue
        ts = out.frame["ts"].dt.epoch("ns").to_list()
        released.append((now[0] - 100.0, [(t - START) / 1e9 for t in ts]))
    flat = [t for _, ts in released for t in ts]
    assert flat == [0, 1, 2, 10, 10.5, 30]  # nothing lost, nothing reordered
    for elapsed, ts in released:
        assert max(ts) / 10.0 <= elapsed + 1e-9  # never early
    assert released[-1][0] == pytest.approx(3.0, abs=0.06)  # and not much late either (step 0.05)
    assert sum(o for o in waits) > 2.9
    # the 2 s pause before the trade at 30 s came with empty batches, none closer than IDLE_BATCH_S
    assert len(idle) >= 4 and min(b - a for a, b in itertools.pairwise(idle)) >= IDLE_BATCH_S - 1e-9


def test_pace_stops_promptly_when_asked():
    stop = Event()
    now = [0.0]

    def wait(seconds):
        now[0] += seconds
        stop.set()

    got = list(pace(iter([_batch([0, 1000])]), speed=1.0, stop=stop, clock=lambda: now[0], wait=wait))
    assert [o.frame.height for o in got] == [1]


def test_pace_is_not_stalled_by_a_trade_stamped_far_off():
    """A 1970 row first used to set the origin (the next row due in weeks at 1000x); a row
    stamped a year ahead in the middle blocked every row after it. They now go out at once
    (to quarantine), and the rest keeps the file's pace."""
    year = 365 * 86_400.0
    released = _paced([_batch([-START / 1e9, 0, 1, 2, year, 3]), _batch([4, 5]), _batch([6, year, 7, 8])])
    flat = [t for _, ts in released for t in ts]
    assert flat == [-START / 1e9, 0, 1, 2, year, 3, 4, 5, 6, year, 7, 8]  # nothing lost, nothing reordered
    last = max(e for e, _ in released)
    assert last == pytest.approx(0.8, abs=0.06)  # 8 s of market at 10x: no outlier waited for
    for elapsed, ts in released:
        assert all(t == year or t / 10.0 <= elapsed + 1e-9 for t in ts if t >= 0)  # the rest never early


def test_pace_skips_a_long_pause_and_judges_a_batchs_last_trade_with_the_next():
    day = 86_400.0
    released = _paced([_batch([0, 1, 2]), _batch([10 * day, 10 * day + 1]), _batch([None, 10 * day + 2])])
    assert [t for _, ts in released for t in ts] == [0, 1, 2, 10 * day, 10 * day + 1, 0, 10 * day + 2]
    # the ten-day pause (real: trades on both sides) takes no time; the rest keeps pace
    assert max(e for e, _ in released) == pytest.approx(0.4, abs=0.06)
    # a year-off trade that ends a batch is caught once the next batch shows where time went on
    released = _paced([_batch([0, 1, 2, 365 * day]), _batch([3, 4])])
    assert max(e for e, _ in released) == pytest.approx(0.4, abs=0.06)


def test_pace_keeps_its_clock_through_a_run_of_trades_stamped_years_off():
    """Two neighbouring trades three years earlier are not each isolated; they used to move
    the clock back for good, releasing everything after them at once."""
    years = 3 * 365 * 86_400.0
    released = _paced([_batch([0, 1, 2, -years, -years + 1, 3, 4, 5, 6, 7, 8])])
    assert max(e for e, _ in released) == pytest.approx(0.8, abs=0.06)
    for elapsed, ts in released:
        assert all(t / 10.0 <= elapsed + 1e-9 for t in ts if t >= 0)


def test_max_ticks_bounds_the_source_exactly():
    src = SyntheticSource(["BTC/USD"], seed=1, start_ns=START, max_ticks=12345)
    assert sum(b.frame.height for b in src.batches(Event())) == 12345
