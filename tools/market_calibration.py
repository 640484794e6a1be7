"""The simulated market's statistics against real crypto: the figures in docs/ingest.md.

Run: `.venv/bin/python tools/market_calibration.py [--days 10] [--seeds 5]`. It simulates the
default symbols from the simulator directly (no data directory), builds one-minute bars from
the trades as `rtml features` does (each bar's last trade; a bar without trades carries the
last close), and prints per symbol: annualised volatility, the mean absolute five-minute
return, excess kurtosis, volatility clustering, the autocorrelation of returns, and the
oracle's hit rate on the default horizon (five bars); then how often buy-and-hold wins.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtml_cli.sources.synthetic import DEFAULT_SYMBOLS, Simulator, oracle

START_NS = 1_767_225_600 * 1_000_000_000
MINUTES_PER_YEAR = 365.25 * 1440


def simulate(seed: int, days: float, regime: str | None = None, symbols=None) -> tuple[Simulator, np.ndarray]:
    """The simulator (with its trace) and symbols x minutes of bar closes."""
    symbols = symbols or DEFAULT_SYMBOLS
    sim = Simulator(symbols, seed, START_NS, regime=regime, trace=True)
    blocks = int(days * 144)
    minutes = blocks * 10
    closes = np.full((len(symbols), minutes), np.nan)
    for _ in range(blocks):
        b = sim.block()
        minute = (b["ts"] - START_NS) // 60_000_000_000
        for k in range(len(symbols)):
            mine = b["sym"] == k
            # the last trade of each minute: later trades overwrite earlier ones
            closes[k, minute[mine]] = b["price"][mine]
    for k in range(len(symbols)):  # empty bars carry the last close
        row = closes[k]
        idx = np.where(np.isnan(row), 0, np.arange(len(row)))
        np.maximum.accumulate(idx, out=idx)
        closes[k] = row[idx]
    return sim, closes


def kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.mean(x**4) / np.mean(x**2) ** 2 - 3)


def autocorr(x: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(x[lag:], x[:-lag])[0, 1])


def describe(closes: np.ndarray, symbols: list[str]) -> list[dict[str, float]]:
    out = []
    for k, sym in enumerate(symbols):
        r1 = np.diff(np.log(closes[k]))
        r5 = np.log(closes[k, 5::5] / closes[k, :-5:5])
        out.append(
            {
                "symbol": sym,
                "annual_vol": float(r1.std() * math.sqrt(MINUTES_PER_YEAR)),
                "mean_abs_5m": float(np.mean(np.abs(r5))),
                "kurtosis_1m": kurtosis(r1),
                "kurtosis_5m": kurtosis(r5),
                "acf_abs_1m_lag60": autocorr(np.abs(r1), 60),
                "acf_1m_lag1": autocorr(r1, 1),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    rows, oracles, wins, drifts = [], [], 0, []
    for seed in range(args.seeds):
        sim, closes = simulate(seed, args.days)
        rows += describe(closes, DEFAULT_SYMBOLS)
        oracles.append(oracle(sim, closes, 60, 5))
        ret = np.log(closes[:, -1] / closes[:, 0])
        wins += int((ret > 0).sum())
        drifts += ret.tolist()
    print(f"{args.seeds} runs of {args.days:g} days, one-minute bars")
    print(
        f"{'symbol':8} {'ann. vol':>9} {'mean|r5m|':>10} {'kurt 1m':>8} {'kurt 5m':>8} {'acf|r| 60':>10} {'acf r 1':>8}"
    )
    for sym in DEFAULT_SYMBOLS:
        mine = [r for r in rows if r["symbol"] == sym]
        med = {k: float(np.median([r[k] for r in mine])) for k in mine[0] if k != "symbol"}
        print(
            f"{sym:8} {med['annual_vol']:9.1%} {med['mean_abs_5m']:10.3%} {med['kurtosis_1m']:8.1f} "
            f"{med['kurtosis_5m']:8.1f} {med['acf_abs_1m_lag60']:10.3f} {med['acf_1m_lag1']:8.3f}"
        )
    o = {k: float(np.mean([x[k] for x in oracles])) for k in oracles[0]}
    print(
        f"oracle (5 bars ahead): hit rate {o['hit_rate']:.3f} overall (a coin flip in the random walk), "
        f"{o['hit_rate_with_a_view']:.3f} where it has a view ({o['share_with_a_view']:.0%} of bars)"
    )
    print(f"buy and hold: up in {wins} of {len(drifts)} symbol-runs; mean log return {np.mean(drifts):+.3%}")


if __name__ == "__main__":
    main()
