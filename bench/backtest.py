"""Backtest benchmark: rtml backtest against River's progressive_val_score; parallel models;
a 10M-row table (20 symbols) against its first 1M rows: memory and time per row; one model
per symbol (`--by-symbol`) on those 1M rows, in one process and split between two.

Run: `.venv/bin/python bench/backtest.py [--rows 1000000] [--big-rows 10000000]` (also part of
`make bench`; `--big-rows 0` skips the big table, which takes about a quarter of an hour).
The table is synthetic: 12 features, a target that is a drifting linear function of them plus
noise, one row a minute. Everything timed is a fresh process that reads the Parquet file
(interpreter start and imports included): (a) the `rtml backtest` command, (b) a script
running River's progressive_val_score, and the parallel runs.
"""

from __future__ import annotations

import argparse
import json
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
        ts=pl.datetime_range(
            pl.datetime(2026, 1, 1),
            pl.datetime(2026, 1, 1) + pl.duration(minutes=n - 1),
            "1m",
            eager=True,
            time_zone="UTC",
        ),
    )
    frame.write_parquet(path)


def make_big_table(path: Path, n: int, symbols: int = 20, seed: int = 5) -> None:
    """`n` rows of `symbols` symbols, a row per symbol a minute (so in time order), 12
    features and a drifting target as in `make_table`; written a million rows at a time."""
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=12)
    writer = None
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        x = rng.normal(size=(m, 12))
        w = np.cumsum(rng.normal(scale=0.002, size=(m, 12)), axis=0) + w0
        w0 = w[-1]
        row = np.arange(start, start + m)
        table = (
            pl.DataFrame({f"f{i}": x[:, i] for i in range(12)})
            .with_columns(
                target=pl.Series((x * w).sum(axis=1) * 1e-3 + rng.normal(scale=2e-3, size=m)),
                symbol=pl.Series([f"S{k:02d}" for k in row % symbols]),
                ts=pl.Series(1_767_225_600_000_000_000 + (row // symbols) * 60_000_000_000).cast(
                    pl.Datetime("ns", "UTC")
                ),
            )
            .to_arrow()
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=250_000)
    assert writer is not None
    writer.close()


PEAK_MB: dict[str, float] = {}


def command(*args: str) -> float:
    """Wall seconds of one `rtml backtest`; its peak memory (GNU time) goes to PEAK_MB."""
    t0 = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "rtml_cli", "backtest", "--json", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    PEAK_MB[" ".join(a for a in args if not a.startswith("/"))] = int(out.stderr.strip().splitlines()[-1]) / 1024
    return time.perf_counter() - t0


def run_floor(table: str) -> None:
    """(b): read the table and run River's progressive_val_score; prints the MAE."""
    import polars as pl
    from river import evaluate, linear_model, metrics, optim, preprocessing, stream

    frame = pl.read_parquet(table)
    X, y = frame.drop("target", "ts", "symbol", strict=False), frame["target"]
    # rtml's `sgd` spec, exactly (tests/test_train.py checks it is)
    model = preprocessing.TargetStandardScaler(
        regressor=preprocessing.StandardScaler()
        | linear_model.LinearRegression(optimizer=optim.SGD(0.001), intercept_lr=0.001)
    )
    print(evaluate.progressive_val_score(stream.iter_polars(X, y), model, metrics.MAE()).get())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=10_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--floor", metavar="TABLE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor:
        run_floor(args.floor)
        return
    n = args.rows

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        table = Path(tmp) / "table.parquet"
        make_table(table, n)
        table_args = ["--table", str(table), "--target", "target", "--ts", "ts", "--delay", "0"]
        sgd = ["--model", "sgd"]  # River's own pipeline, so the floor runs the same model

        # (a) the command and (b) the floor, each a fresh process that reads the table, taking
        # turns, best of two: River's own prequential evaluation of the same model, same rows
        a_times, b_times = [], []
        for _ in range(2):
            a_times.append(command(*table_args, *sgd))
            t0 = time.perf_counter()
            floor_run = subprocess.run(
                [sys.executable, __file__, "--floor", str(table)], check=True, capture_output=True, text=True
            )
            b_times.append(time.perf_counter() - t0)
        backtest_s, floor_s = min(a_times), min(b_times)
        out = subprocess.run(
            [sys.executable, "-m", "rtml_cli", "backtest", "--json", *table_args, *sgd, "--warmup", "0"],
            check=True,
            capture_output=True,
            text=True,
        )
        mae = next(r["mae"] for r in json.loads(out.stdout)["results"] if r["model"] == "sgd" and r["refresh"] == "1")

        # whole commands: each model alone, and the three in two processes
        one_s = backtest_s
        linear_s = command(*table_args)  # the default model
        pa_s = command(*table_args, "--model", "pa")
        bayes_s = command(*table_args, "--model", "bayes")
        three_s = command(*table_args, *sgd, "--model", "pa", "--model", "bayes", "--jobs", "2")
        # what two processes get out of this machine's two cores: two one-model commands at once
        t0 = time.perf_counter()
        both = [
            subprocess.Popen(
                [sys.executable, "-m", "rtml_cli", "backtest", "--json", *table_args, *extra], stdout=subprocess.DEVNULL
            )
            for extra in (sgd, ["--model", "pa"])
        ]
        assert all(p.wait() == 0 for p in both)
        two_at_once_s = time.perf_counter() - t0

        # a big table against its first million rows: `linear`, 20 symbols, times in order
        big: dict[str, float] = {}
        if args.big_rows:
            import polars as pl

            big_path, small_path = Path(tmp) / "big.parquet", Path(tmp) / "big_1m.parquet"
            make_big_table(big_path, args.big_rows)
            pl.scan_parquet(big_path).head(1_000_000).sink_parquet(small_path)
            table.unlink()  # (disk: the big table is a gigabyte)
            small_args = ["--table", str(small_path), "--target", "target", "--ts", "ts"]
            big["rows_small"], big["rows_big"] = 1_000_000, args.big_rows
            big["small_s"] = command(*small_args)
            big["small_peak_mb"] = PEAK_MB[" ".join(a for a in small_args if not a.startswith("/"))]
            t0 = time.perf_counter()
            floor_small = subprocess.run(
                [sys.executable, __file__, "--floor", str(small_path)], check=True, capture_output=True, text=True
            )
            big["floor_small_s"] = time.perf_counter() - t0
            assert floor_small.returncode == 0
            # one model per symbol: the same rows, the symbols' models in one process, then split in two
            big["by_symbol_s"] = command(*small_args, "--by-symbol")
            big["by_symbol_jobs_2_s"] = command(*small_args, "--by-symbol", "--jobs", "2")
            big_args = ["--table", str(big_path), "--target", "target", "--ts", "ts"]
            big["big_s"] = command(*big_args)
            big["big_peak_mb"] = PEAK_MB[" ".join(a for a in big_args if not a.startswith("/"))]

    results = {
        "rows": n,
        "floor_progressive_val_score_s": round(floor_s, 2),
        "rtml_backtest_command_s": round(backtest_s, 2),
        "floor_over_backtest (b/a)": round(floor_s / backtest_s, 3),
        "mae_rtml": mae,
        "mae_river": float(floor_run.stdout.strip()),
        "command_three_models_jobs_2_s": round(three_s, 2),
        "three_over_one": round(three_s / one_s, 2),
        "command_one_model_peak_rss_mb": round(next(iter(PEAK_MB.values())), 1),
        "command_linear_alone_s": round(linear_s, 2),
        "command_pa_alone_s": round(pa_s, 2),
        "command_bayes_alone_s": round(bayes_s, 2),
        "three_jobs_2_over_the_three_one_after_another": round(three_s / (one_s + pa_s + bayes_s), 2),
        "sgd_and_pa_commands_at_once_s": round(two_at_once_s, 2),
        "two_at_once_over_one_after_another": round(two_at_once_s / (one_s + pa_s), 2),
    }
    if big:
        per_row_small = big["small_s"] / big["rows_small"]
        per_row_big = big["big_s"] / big["rows_big"]
        results |= {
            f"big_table_rows ({int(big['rows_big']):,}, 20 symbols)": int(big["rows_big"]),
            "linear_first_1m_rows_s": round(big["small_s"], 1),
            "linear_first_1m_rows_peak_rss_mb": round(big["small_peak_mb"]),
            "river_floor_sgd_first_1m_rows_s": round(big["floor_small_s"], 1),
            "by_symbol_first_1m_rows_s": round(big["by_symbol_s"], 1),
            "by_symbol_jobs_2_first_1m_rows_s": round(big["by_symbol_jobs_2_s"], 1),
            "by_symbol_jobs_2_speed_up": round(big["by_symbol_s"] / big["by_symbol_jobs_2_s"], 2),
            "linear_big_table_s": round(big["big_s"], 1),
            "linear_big_table_peak_rss_mb": round(big["big_peak_mb"]),
            "big_over_1m_peak_rss": round(big["big_peak_mb"] / big["small_peak_mb"], 2),
            "big_over_1m_time_per_row": round(per_row_big / per_row_small, 3),
        }
    if not show(results, args.json):
        return
    print(
        f"target: (b)/(a) >= 0.8 -> {results['floor_over_backtest (b/a)']}; "
        f"3 models with --jobs 2 <= 2x one model -> {results['three_over_one']}x"
    )
    if big:
        print(
            f"target: big table peak RSS < 1500 MB -> {results['linear_big_table_peak_rss_mb']} MB, "
            f"and <= 1.5x the 1M-row run's -> {results['big_over_1m_peak_rss']}x; "
            f"time per row <= 1.2x the 1M-row run's -> {results['big_over_1m_time_per_row']}x"
        )


if __name__ == "__main__":
    main()
