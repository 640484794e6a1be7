"""The market simulator: reproducible, continuing, paced, and carrying real concept drift."""

from __future__ import annotations

import json
from threading import Event

import numpy as np
import polars as pl
import pytest

from rtml_cli.log import ParquetLog
from rtml_cli.sources import TickBatch, pace
from rtml_cli.sources.synthetic import REGIMES, Simulator, SyntheticSource

START = 1_767_225_600 * 1_000_000_000
COLS = ["ts", "recv_ts", "symbol", "price", "qty", "side", "trade_id"]


def ticks(data_dir) -> pl.DataFrame:
    return ParquetLog(data_dir, "ticks").read_all().sort("symbol", "offset")


def test_the_same_seed_gives_the_same_ticks_whatever_the_flush_size(rtml, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, flush in ((a, "100000"), (b, "777"), (c, "100000")):
        seed = "9" if d is c else "7"
        r = rtml("ingest", "--max-ticks", "20000", "--seed", seed, "--flush-every", flush, "--json", "--data-dir", str(d), data=False)
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
    for sym, part in df.group_by("symbol"):
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
    parts = [sim.block() for _ in range(blocks)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    df = pl.DataFrame({"ts": cols["ts"], "price": cols["price"], "qty": cols["qty"], "buy": cols["buy"]})
    signed = pl.when("buy").then(pl.col("qty")).otherwise(-pl.col("qty"))
    bars = (
        df.with_columns(bar=(pl.col("ts") - START) // 60_000_000_000)
        .group_by("bar")
        .agg(close=pl.col("price").last(), ofi=signed.sum() / pl.col("qty").sum())
        .sort("bar")
        .with_columns(ret=pl.col("close").log().diff())
        .with_columns(next_ret=pl.col("ret").shift(-1))
    )
    switch_s = np.array([t for t, _, _ in sim.regime_log])
    names = [r for _, r, _ in sim.regime_log]
    at = np.searchsorted(switch_s, bars["bar"].to_numpy() * 60, side="right") - 1
    return bars.with_columns(regime=pl.Series([names[i] for i in at])).drop_nulls()


def test_the_simulated_market_has_regimes_whose_predictability_flips_sign():
    """Concept drift an online model can exploit: the same features predict opposite moves.

    In the momentum regime the last bar's return and its order-flow imbalance predict the
    next bar's return with a positive sign; in the mean-reversion regime with a negative one.
    """
    sim = Simulator(["BTC/USD"], seed=3, start_ns=START, regime_minutes=30)
    bars = _bars(sim, blocks=6 * 24 * 5)  # five simulated days
    stats = {
        r: (g.select(pl.corr("ret", "next_ret")).item(), g.select(pl.corr("ofi", "next_ret")).item(), g.height)
        for (r,), g in bars.group_by("regime")
    }
    assert set(stats) == set(REGIMES)
    momentum, reversion, walk = stats["momentum"], stats["reversion"], stats["random_walk"]
    assert min(momentum[2], reversion[2], walk[2]) > 1000  # each regime is well represented
    assert momentum[0] > 0.05 and reversion[0] < -0.05  # autocorrelation flips sign
    assert momentum[1] > 0.15 and reversion[1] < -0.05  # so does the flow signal
    assert abs(walk[1]) < 0.1  # and the random walk has little to speak of
    # a frozen model fitted on momentum bars gets the sign wrong in reversion bars
    mom = bars.filter(pl.col("regime") == "momentum")
    rev = bars.filter(pl.col("regime") == "reversion")
    beta = np.polyfit(mom["ofi"].to_numpy(), mom["next_ret"].to_numpy(), 1)[0]
    pred = beta * rev["ofi"].to_numpy()
    assert np.corrcoef(pred, rev["next_ret"].to_numpy())[0, 1] < 0


def test_volatility_regimes_change_the_size_of_moves():
    sim = Simulator(["ETH/USD"], seed=5, start_ns=START, regime_minutes=30)
    parts = [sim.block() for _ in range(6 * 24 * 3)]
    assert any(stormy for _, _, stormy in sim.regime_log), "three days should contain a stormy spell"
    flags = np.zeros(sim.t, dtype=bool)
    for (t0, _, s), (t1, _, _) in zip(sim.regime_log, sim.regime_log[1:] + [(sim.t, "", False)]):
        flags[t0:t1] = s
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    minute = (cols["ts"] - START) // 60_000_000_000
    closes = pl.DataFrame({"m": minute, "p": cols["price"]}).group_by("m").agg(pl.col("p").last()).sort("m")
    ret = np.diff(np.log(closes["p"].to_numpy()))
    stormy_minute = flags.reshape(-1, 60).all(axis=1)[closes["m"].to_numpy()]
    calm_minute = (~flags).reshape(-1, 60).all(axis=1)[closes["m"].to_numpy()]
    storm, calm = stormy_minute[1:] & stormy_minute[:-1], calm_minute[1:] & calm_minute[:-1]
    assert storm.sum() > 300 and calm.sum() > 300
    assert ret[storm].std() > 1.8 * ret[calm].std()  # 2.5x in the generating process


def _batch(ts_seconds: list[float]) -> TickBatch:
    frame = pl.DataFrame({"ts": [int(t * 1e9) for t in ts_seconds]}).select(
        pl.col("ts").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    )
    return TickBatch(frame, raw=pl.lit(""), where=pl.lit(""), progress=len(ts_seconds))


def test_pace_releases_each_trade_when_scaled_wall_time_reaches_it():
    """--speed X: a fake clock shows no trade leaves before (ts - t0) / X seconds have passed."""
    now = [100.0]
    waits = []

    def wait(seconds):
        waits.append(seconds)
        now[0] += max(seconds, 0.001)

    stop = Event()
    batches = [_batch([0, 1, 2, 10]), _batch([10.5, 30])]
    released = []
    for out in pace(iter(batches), speed=10.0, stop=stop, clock=lambda: now[0], wait=wait):
        ts = out.frame["ts"].dt.epoch("ns").to_list()
        released.append((now[0] - 100.0, [t / 1e9 for t in ts]))
    flat = [t for _, ts in released for t in ts]
    assert flat == [0, 1, 2, 10, 10.5, 30]  # nothing lost, nothing reordered
    for elapsed, ts in released:
        assert max(ts) / 10.0 <= elapsed + 1e-9  # never early
    assert released[-1][0] == pytest.approx(3.0, abs=0.06)  # and not much late either (step 0.05)
    assert sum(o for o in waits) > 2.9


def test_pace_stops_promptly_when_asked():
    stop = Event()
    now = [0.0]

    def wait(seconds):
        now[0] += seconds
        stop.set()

    got = list(pace(iter([_batch([0, 1000])]), speed=1.0, stop=stop, clock=lambda: now[0], wait=wait))
    assert [o.frame.height for o in got] == [1]


def test_max_ticks_bounds_the_source_exactly():
    src = SyntheticSource(["BTC/USD"], seed=1, start_ns=START, max_ticks=12345)
    assert sum(b.frame.height for b in src.batches(Event())) == 12345
