"""Backtest benchmark: rtml backtest against River's progressive_val_score; parallel models.

Run: `.venv/bin/python bench/backtest.py [--rows 1000000]` (also part of `make bench`).
The table is synthetic: 12 features, a target that is a drifting linear function of them plus
noise, one row a minute. (a) and (b) are timed in this process, each from the Parquet file
to its metrics; the parallel runs are whole `rtml backtest` commands.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import show  # bench/report.py, beside this script


def make_table(path: Path, n: int, seed: int = 3) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12))
    # the weights drift: a random walk, so a model must keep learning to keep up
    w = np.cumsum(rng.normal(scale=0.002, size=(n, 12)), axis=0) + rng.normal(size=12)
    y = (x * w).sum(axis=1) * 1e-3 + rng.normal(scale=2e-3, size=n)
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(12)}).with_columns(
        target=pl.Series(y),
        ts=pl.datetime_range(pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 1) + pl.duration(minutes=n - 1),
                             "1m", eager=True, time_zone="UTC"),
    )
    frame.write_parquet(path)


def command(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rtml_cli", "backtest", "--json", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.rows

    import polars as pl
    from river import evaluate, linear_model, metrics, preprocessing, stream

    from rtml_cli.backtest import BacktestOptions, load_table, run_backtest

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        table = Path(tmp) / "table.parquet"
        make_table(table, n)
        table_args = ["--table", str(table), "--target", "target", "--ts", "ts", "--delay", "0"]

        # (a) rtml backtest's own work, in this process: read, replay (live and frozen), score
        t0 = time.perf_counter()
        opts = BacktestOptions(table=table, target="target", ts="ts", delay=0)
        result = run_backtest(load_table(opts), opts)
        backtest_s = time.perf_counter() - t0
        mae = next(r["mae"] for r in result["results"] if r["model"] == "linear" and r["refresh"] == "1")
        del result

        # (b) the floor: River's own prequential evaluation of the same model over the same rows
        t0 = time.perf_counter()
        frame = pl.read_parquet(table)
        X, y = frame.drop("target", "ts"), frame["target"]
        floor = evaluate.progressive_val_score(
            stream.iter_polars(X, y), preprocessing.StandardScaler() | linear_model.LinearRegression(), metrics.MAE())
        floor_s = time.perf_counter() - t0
        del frame, X, y

        # whole commands: one model, and three models in two processes
        one_s = command(*table_args)
        three_s = command(*table_args, "--model", "linear", "--model", "pa", "--model", "bayes", "--jobs", "2")
        # what two processes get out of this machine's two cores: two one-model commands at once
        t0 = time.perf_counter()
        both = [subprocess.Popen([sys.executable, "-m", "rtml_cli", "backtest", "--json", *table_args, *extra],
                                 stdout=subprocess.DEVNULL) for extra in ([], ["--model", "pa"])]
        assert all(p.wait() == 0 for p in both)
        two_at_once_s = time.perf_counter() - t0
        pa_s = command(*table_args, "--model", "pa")

    results = {
        "rows": n,
        "floor_progressive_val_score_s": round(floor_s, 2),
        "rtml_backtest_s": round(backtest_s, 2),
        "floor_over_backtest (b/a)": round(floor_s / backtest_s, 3),
        "mae_rtml": mae,
        "mae_river": floor.get(),
        "command_one_model_s": round(one_s, 2),
        "command_three_models_jobs_2_s": round(three_s, 2),
        "three_over_one": round(three_s / one_s, 2),
        "command_pa_alone_s": round(pa_s, 2),
        "linear_and_pa_commands_at_once_s": round(two_at_once_s, 2),
        "two_at_once_over_one_after_another": round(two_at_once_s / (one_s + pa_s), 2),
    }
    if not show(results, args.json):
        return
    print(f"target: (b)/(a) >= 0.8 -> {results['floor_over_backtest (b/a)']}; "
          f"3 models with --jobs 2 <= 2x one model -> {results['three_over_one']}x")


if __name__ == "__main__":
    main()
