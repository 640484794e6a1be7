"""Trading marked to market: hand-worked tapes, buy-and-hold against the prices, and every
figure against a plain-loop recomputation on messy tapes (bad prints, fat tails, gaps)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from tests.conftest import assert_clean_error


def backtest(rtml, *args, data: bool = False) -> dict:
    r = rtml("backtest", "--json", *args, data=data)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def row(summary: dict, model: str, refresh: str = "1") -> dict:
    return next(r for r in summary["results"] if r["model"] == model and r["refresh"] == refresh)


def echo_table(tmp_path, frame: pl.DataFrame, *args: str, name: str = "t.parquet") -> list[str]:
    path = tmp_path / name
    frame.write_parquet(path)
    return ["--table", str(path), "--target", "target", "--model", "bt_models:echo", "--warmup", "0", *args]


# -- by hand --------------------------------------------------------------------------------------


def test_a_three_period_horizon_with_overlapping_positions_worked_by_hand(rtml, tmp_path, user_models):
    # decisions at rows 0, 1, 2: long, short, long; each a 1/3 slice held 3 rows
    prices = [100.0, 110.0, 99.0, 99.0, 108.9, 100.0]
    frame = pl.DataFrame(
        {"signal": [1.0, -1.0, 1.0, 0.0, 0.0, 0.0], "price": prices, "target": [0.01, 0.01, 0.01, None, None, None]}
    )
    s = backtest(rtml, *echo_table(tmp_path, frame, "--delay", "3", "--price", "price"))
    r5 = 100 / 108.9 - 1
    # step 1: +1/3 (slice 0); 2: slices 0, 1 net 0; 3: slices 0, 1, 2 net +1/3; 4: slices 1, 2 net 0; 5: slice 2
    by_hand = (1 + 0.1 / 3) * (1 + r5 / 3) - 1
    echo = row(s, "bt_models:echo")
    assert echo["total_return"] == pytest.approx(by_hand, abs=1e-12)
    assert echo["turnover"] == pytest.approx(2 / 5)  # 1/3 in, out, in, out, in, and closed at the end: 2 units
    assert echo["exposure"] == pytest.approx((1 / 3 + 0 + 1 / 3 + 0 + 1 / 3) / 5)
    fee = 0.001  # 10 bp on every change of the net position, the last one closing it
    with_fees = (1 + 0.1 / 3 - fee / 3) * (1 - fee / 3) * (1 - fee / 3) * (1 - fee / 3) * (
        1 + r5 / 3 - fee / 3 - fee / 3
    ) - 1
    assert echo["return_at_10bp"] == pytest.approx(with_fees, abs=1e-12)
    # the equity path: 1, 1 + 0.1/3, then flat until the last step; the drawdown is that step's loss
    assert echo["max_drawdown"] == pytest.approx(-r5 / 3 / 1, abs=1e-12)
    # buy and hold is one unit from the first decision to the last price
    assert s["buy_and_hold"]["total_return"] == pytest.approx(100 / 100 - 1, abs=1e-12)


@pytest.mark.slow
def test_buy_and_hold_is_the_price_change_for_any_horizon(rtml, tmp_path, user_models):
    rng = np.random.default_rng(3)
    n = 400
    price = 50 * np.exp(np.cumsum(rng.standard_t(2.5, n) * 0.01))
    price[123] /= 10  # a bad print
    for h in (1, 2, 5, 17):
        frame = pl.DataFrame({"signal": rng.standard_normal(n), "price": price, "target": rng.standard_normal(n)})
        s = backtest(
            rtml,
            *echo_table(tmp_path, frame, "--delay", str(h), "--price", "price", "--warmup", "30", name=f"h{h}.parquet"),
        )
        assert s["buy_and_hold"]["total_return"] == pytest.approx(price[-1] / price[30] - 1, rel=1e-12, abs=1e-12)


def test_two_streams_share_the_capital_without_rebalancing(rtml, tmp_path, user_models):
    times = pl.datetime_range(
        pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 1, 3, 19), "1m", eager=True, time_zone="UTC"
    )
    rng = np.random.default_rng(7)
    a = 10 * np.exp(np.cumsum(rng.normal(0, 0.01, len(times))))
    b = 3000 * np.exp(np.cumsum(rng.normal(0, 0.02, len(times))))
    frame = pl.concat(
        [
            pl.DataFrame({"symbol": "A", "t": times, "price": a, "signal": 1.0, "target": 0.0}),
            pl.DataFrame({"symbol": "B", "t": times, "price": b, "signal": 1.0, "target": 0.0}).slice(
                20
            ),  # B starts later
        ]
    )
    s = backtest(rtml, *echo_table(tmp_path, frame, "--ts", "t", "--delay", "4", "--price", "price"))
    ret_a, ret_b = a[-1] / a[0] - 1, b[-1] / b[20] - 1
    assert s["buy_and_hold"]["total_return"] == pytest.approx((ret_a + ret_b) / 2, rel=1e-12)
    by = {r["symbol"]: r["total_return"] for r in s["by_symbol"] if r["model"] == "buy and hold"}
    assert by == pytest.approx({"A": ret_a, "B": ret_b}, rel=1e-12)


# -- against a plain recomputation ---------------------------------------------------------------


def reference(
    points: dict[str, list[tuple[int, float, float | None]]], hold: int, fee_bps: float, periods_per_year: float
) -> dict[str, float]:
    """The book by plain loops: per symbol, (period, price, decision or None) in time order."""
    fee = fee_bps / 10_000
    curves = {}
    for sym, pts in points.items():
        first = next(i for i, p in enumerate(pts) if p[2] is not None)
        equity, prev, curve = 1.0, 0.0, {pts[first][0]: 1.0}
        for k in range(first + 1, len(pts)):
            pos = sum((pts[j][2] or 0.0) for j in range(max(first, k - hold), k)) / hold
            r = pts[k][1] / pts[k - 1][1] - 1
            cost = fee * abs(pos - prev) + (fee * abs(pos) if k == len(pts) - 1 else 0.0)
            equity *= 1 + pos * r - cost
            prev = pos
            curve[pts[k][0]] = equity
        curves[sym] = curve
    start = min(min(c) for c in curves.values())
    end = max(max(c) for c in curves.values())
    value = []
    for p in range(start, end + 1):
        total = 0.0
        for c in curves.values():
            known = [q for q in c if q <= p]
            total += c[max(known)] if known else 1.0
        value.append(total / len(curves))
    value = np.array(value)
    r = value[1:] / value[:-1] - 1
    peak = np.maximum.accumulate(value)
    return {
        "total_return": value[-1] - 1,
        "sharpe": r.mean() / r.std(ddof=1) * math.sqrt(periods_per_year),
        "max_drawdown": float(np.max(1 - value / peak)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("hold, fee, band", [(1, 0.0, 0.0), (3, 2.5, 0.0), (8, 10.0, 0.3)])
def test_every_trading_figure_equals_a_plain_recomputation_on_a_messy_tape(
    rtml, tmp_path, user_models, hold, fee, band
):
    rng = np.random.default_rng(hold)
    grid = pl.datetime_range(pl.datetime(2026, 3, 1), pl.datetime(2026, 3, 2, 23, 0), "1h", eager=True, time_zone="UTC")
    frames = []
    for k, sym in enumerate(["X", "Y", "Z"]):
        n = len(grid)
        price = (20 + 500 * k) * np.exp(np.cumsum(rng.standard_t(2, n) * 0.004))
        price[rng.integers(10, n - 10)] *= 0.1  # a bad print
        keep = rng.random(n) > 0.15  # gaps: hours without a row
        keep[:3] = True
        signal = rng.standard_normal(n)
        target = np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n))  # some rows without a label
        frames.append(
            pl.DataFrame({"symbol": sym, "t": grid, "price": price, "signal": signal, "target": target}).filter(
                pl.Series(keep)
            )
        )
    frame = pl.concat(frames).with_columns(pl.col("target").fill_nan(None))
    warmup = 12
    s = backtest(
        rtml,
        *echo_table(
            tmp_path,
            frame,
            "--ts",
            "t",
            "--delay",
            str(hold),
            "--price",
            "price",
            "--fee-bps",
            str(fee),
            "--band",
            str(band),
            "--warmup",
            str(warmup),
        ),
    )
    # decisions: the rows with a target, after the warm-up rows (in time order)
    ordered = frame.with_row_index("i").sort("t", maintain_order=True)
    labelled = ordered.filter(pl.col("target").is_not_null())
    scored = set(labelled["i"].to_list()[warmup:])
    periods = {t: p for p, t in enumerate(sorted(set(frame["t"].to_list())))}
    points = {}
    for sym in ["X", "Y", "Z"]:
        mine = ordered.filter(pl.col("symbol") == sym)
        pts = []
        for i, t, price, signal in mine.select("i", "t", "price", "signal").iter_rows():
            decision = (1.0 if signal > band else -1.0 if signal < -band else 0.0) if i in scored else None
            pts.append((periods[t], price, decision))
        points[sym] = pts
    span_years = (frame["t"].max() - frame["t"].min()).total_seconds() / (365.25 * 86_400)
    ppy = (len(periods) - 1) / span_years  # a period is an hour with a row
    assert s["periods_per_year"] == pytest.approx(ppy, rel=1e-12)
    want = reference(points, hold, fee, ppy)
    got = row(s, "bt_models:echo")
    for key in ("total_return", "sharpe", "max_drawdown"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    if fee in (0, 1, 5, 10):  # the fee ladder's line at the run's own fee is the run's return
        assert got[f"return_at_{fee:g}bp"] == pytest.approx(got["total_return"], rel=1e-12)


@pytest.mark.slow
def test_the_examples_log_is_marked_to_its_bars_closes(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "60000", "--json").exit_code == 0
    assert rtml("features", "--horizon", "3", "--json").exit_code == 0
    s = backtest(rtml, "--warmup", "40", "--refresh", "1", data=True)
    assert s["trades_on"] == "the bars' closes" and s["holding_rows"] == 3
    from rtml_cli.log import ParquetLog

    ex, feats = ParquetLog(data_dir, "examples"), ParquetLog(data_dir, "features")
    rows = pl.concat([ex.read_after(sym, columns=["offset", "ts", "symbol"]) for sym in ex.partitions()])
    first = rows.sort("ts", "symbol", "offset").slice(40)  # scored rows
    returns = []
    for sym in ex.partitions():
        mine = first.filter(pl.col("symbol") == sym)
        lo, hi = mine["offset"].min(), rows.filter(pl.col("symbol") == sym)["offset"].max()
        closes = feats.read_after(sym, lo - 1, columns=["close"], upto=hi + 3)["close"]
        returns.append(closes[-1] / closes[0] - 1)
    assert s["buy_and_hold"]["total_return"] == pytest.approx(float(np.mean(returns)), rel=1e-12)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_prices_and_horizons_are_clear_errors(rtml, tmp_path, user_models, data_dir):
    base = {"signal": [1.0, -1.0, 1.0, 0.5], "target": [0.1, 0.2, 0.3, 0.4]}
    cases = [
        ({"price": [10.0, 0.0, 11.0, 12.0]}, ["--price", "price"], "at or below zero"),
        ({"price": [10.0, -3.0, 11.0, 12.0]}, ["--price", "price"], "at or below zero"),
        ({"price": ["a", "b", "c", "d"]}, ["--price", "price"], "not numbers"),
        ({"price": [10.0, None, 11.0, 12.0]}, ["--price", "price"], "without a price"),
        ({"price": [10.0, 11.0, 12.0, 13.0]}, ["--price", "nope"], "is not a column"),
        ({"price": [10.0, 11.0, 12.0, 13.0]}, ["--price", "price", "--returns", "simple"], "give one"),
        ({"price": [10.0, 11.0, 12.0, 13.0]}, ["--price", "target"], "is the --target"),
        ({"price": [10.0, 11.0, 12.0, 13.0]}, ["--delay", "4"], "longer than the data"),
    ]
    for k, (extra, args, fragment) in enumerate(cases):
        path = tmp_path / f"bad{k}.parquet"
        pl.DataFrame({**base, **extra}).write_parquet(path)
        assert_clean_error(
            rtml("backtest", "--table", str(path), "--target", "target", "--warmup", "0", *args, data=False), fragment
        )
    assert_clean_error(rtml("backtest", "--price", "close"), "describe a --table")


def test_a_table_without_prices_trades_only_one_row_ahead(rtml, tmp_path, user_models):
    frame = pl.DataFrame({"signal": [1.0, -1.0, 0.0, 1.0] * 10, "target": [0.02, -0.01, 0.03, -0.04] * 10})
    one = backtest(rtml, *echo_table(tmp_path, frame, "--returns", "simple"))
    assert one["trades_on"] == "the target as the next row's simple return"
    assert row(one, "bt_models:echo")["total_return"] == pytest.approx((1.02 * 1.01 * 1.0 * 0.96) ** 10 - 1, abs=1e-12)
    three = backtest(rtml, *echo_table(tmp_path, frame, "--returns", "simple", "--delay", "3", name="t3.parquet"))
    assert three["trades_on"] is None and "give --price" in three["no_trading"]
    assert "total_return" not in row(three, "bt_models:echo")
    assert any("no trading figures" in w for w in three["warnings"])
