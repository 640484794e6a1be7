"""The significance figures: checked by simulation (a true null is rejected about 5% of the
time, a 95% interval covers the truth about 95% of the time) and against plain formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtml_cli import stats


def overlapping_targets(rng, k: int, h: int, streams: int = 3) -> np.ndarray:
    """k periods x streams of h-period returns: fat tails, a common factor, overlapping."""
    common = rng.standard_normal(k + h)
    shocks = 0.5 * common[:, None] + math.sqrt(0.75) * rng.standard_t(4, (k + h, streams))
    level = np.cumsum(shocks, axis=0)
    return level[h:] - level[:-h]


@pytest.mark.slow
@pytest.mark.parametrize("k, h", [(300, 5), (1000, 5), (400, 1)])
def test_tests_of_a_true_null_reject_about_five_percent(k, h):
    rng = np.random.default_rng(k + h)
    dm, hit = [], []
    for _ in range(300):
        y = overlapping_targets(rng, k, h)
        c = 0.05 * y.std()
        periods = np.repeat(np.arange(k), y.shape[1])
        flat = y.ravel()
        # +c and -c forecasts have the same expected loss on symmetric targets; an always-up call
        # hits half the time: their differences are as autocorrelated as the overlap makes them
        dm.append(stats.diebold_mariano(np.abs(flat - c), np.abs(flat + c), periods, h)["p"] < 0.05)
        hit.append(stats.hit_rate_test(np.ones_like(flat), flat, periods, h) < 0.05)
    # 300 runs: a 5% test rejects 15 +- 4; a test that ignored the overlap rejects 20-40%
    assert 0.01 <= np.mean(dm) <= 0.10
    assert 0.01 <= np.mean(hit) <= 0.10


def test_a_real_difference_is_found():
    rng = np.random.default_rng(1)
    y = overlapping_targets(rng, 2000, 5)
    signal = y + 3 * rng.standard_normal(y.shape)  # an informative forecast (noisy, so honestly found)
    periods = np.repeat(np.arange(2000), 3)
    out = stats.diebold_mariano(np.abs(0.2 * signal.ravel() - y.ravel()), np.abs(y.ravel()), periods, 5)
    assert out["diff"] < 0 and out["p"] < 0.001
    assert stats.hit_rate_test(signal.ravel(), y.ravel(), periods, 5) < 0.001


@pytest.mark.parametrize("ordered", [True, False])
def test_the_hit_rate_test_sums_only_the_rows_and_periods_with_a_moving_target(ordered):
    """Rows with a zero target are left out, and so is a period that has only such rows:
    the test equals mean_test over per-period sums of hit - 0.5 by a plain polars group-by."""
    import polars as pl

    rng = np.random.default_rng(9)
    periods = np.repeat(np.arange(400), 3)
    if not ordered:
        periods = rng.permutation(periods)
    y = rng.standard_t(3, len(periods))
    y[rng.random(len(y)) < 0.3] = 0.0
    y[periods < 40] = 0.0  # forty periods without a move
    pred = np.round(y + rng.standard_normal(len(y)), 1)  # some zero predictions (misses)
    pred[5] = np.nan
    frame = pl.DataFrame({"p": pred, "y": y, "period": periods}).filter(pl.col("y") != 0)
    sums = (
        frame.with_columns(s=(pl.col("p").sign() == pl.col("y").sign()).fill_null(False).cast(pl.Float64) - 0.5)
        .group_by("period")
        .agg(pl.col("s").sum())
        .sort("period")["s"]
        .to_numpy()
    )
    assert len(sums) == len(np.unique(frame["period"])) <= 360
    assert stats.hit_rate_test(pred, y, periods, 3) == pytest.approx(stats.mean_test(sums, 3)[1], rel=1e-12)


def test_the_diebold_mariano_statistic_equals_its_formula_on_one_stream():
    rng = np.random.default_rng(4)
    d_a, d_b = np.abs(rng.standard_normal(200)), np.abs(rng.standard_normal(200))
    out = stats.diebold_mariano(d_a, d_b, np.arange(200), 1)
    d = d_a - d_b
    x = d - d.mean()
    # h = 1: the larger of the plain variance and a Bartlett one at Andrews' bandwidth
    rho = (x[1:] @ x[:-1]) / (x @ x)
    alpha = 4 * rho**2 / ((1 - rho) ** 2 * (1 + rho) ** 2)
    lags = math.ceil(1.1447 * (alpha * 200) ** (1 / 3))
    bartlett = x @ x / 200 + 2 * sum((1 - j / (lags + 1)) * (x[j:] @ x[:-j]) / 200 for j in range(1, lags + 1))
    var = max(x @ x / 200, bartlett)
    t = d.mean() / math.sqrt(var / 200) * math.sqrt((200 + 1 - 2 + 0) / 200)
    assert out["t"] == pytest.approx(t, rel=1e-12)
    from scipy import stats as sp

    assert out["p"] == pytest.approx(2 * sp.t.sf(abs(t), 199), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["normal", "fat tails", "volatility clusters"])
def test_the_sharpe_interval_covers_the_true_ratio_95_percent_of_the_time(kind):
    rng = np.random.default_rng(len(kind))
    covered = []
    for _ in range(400):
        if kind == "normal":
            r = 0.05 + rng.standard_normal(500)
        elif kind == "fat tails":
            r = 0.05 + rng.standard_t(3, 500) / math.sqrt(3)
        else:  # GARCH(1,1) with unit unconditional variance
            r, s2 = np.empty(500), 1.0
            for i in range(500):
                s2 = 0.05 + 0.1 * (r[i - 1] - 0.05) ** 2 + 0.85 * s2 if i else 1.0
                r[i] = 0.05 + math.sqrt(s2) * rng.standard_normal()
        ci = stats.sharpe_interval(r, 1.0)
        covered.append(ci["sharpe_low"] <= 0.05 <= ci["sharpe_high"])
    assert 0.91 <= np.mean(covered) <= 0.98


def test_the_sharpe_error_is_los_iid_formula_on_normal_returns():
    rng = np.random.default_rng(9)
    r = 0.1 + rng.standard_normal(200_000)
    sr = r.mean() / r.std()
    se = stats.sharpe_interval(r, 252)["sharpe_se"]
    assert se == pytest.approx(math.sqrt((1 + sr**2 / 2) / len(r)) * math.sqrt(252), rel=0.03)
