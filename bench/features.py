"""Features benchmark: one-shot build against a plain DuckDB OHLCV floor; incremental step cost.

Run: `make bench-features` or `.venv/bin/python bench/features.py [--ticks 10000000]`.
(a) `rtml features` over the whole ticks log and (b) one DuckDB query computing 1-minute
OHLCV over the same Parquet files each run as a fresh process (interpreter start and
imports included), best of three. Then 60 simulated seconds of ticks are appended and one incremental step
is timed in-process (the follow loop's unit of work), on this log and on one 10x smaller.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import show  # bench/report.py, beside this script

FLOOR = """
import sys, duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
rows = con.sql(f'''
    SELECT symbol, time_bucket(INTERVAL 1 minute, ts) AS bar,
           arg_min(price, ts) AS open, max(price) AS high, min(price) AS low,
           arg_max(price, ts) AS close, sum(qty) AS volume, count(*) AS n_trades
    FROM read_parquet('{sys.argv[1]}/ticks/*/*.parquet', hive_partitioning = true)
    GROUP BY ALL
''').fetchall()
print(len(rows))
"""


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def rtml(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtml_cli", *args]


def append_seconds(data_dir: Path, seconds: int, seed: int) -> int:
    """Append `seconds` of simulated market to the ticks log, continuing where it ends."""
    import polars as pl

    from rtml_cli.ingest import synthetic_resume
    from rtml_cli.log import ParquetLog
    from rtml_cli.schema import ns_to_utc
    from rtml_cli.sources.synthetic import DEFAULT_SYMBOLS, Simulator

    start, resume = synthetic_resume(data_dir, DEFAULT_SYMBOLS)
    cols = Simulator(DEFAULT_SYMBOLS, seed, start, resume=resume).block(seconds)
    frame = pl.DataFrame({k: cols[k] for k in ("ts", "sym", "price", "qty", "buy", "id")}).select(
        ns_to_utc(pl.col("ts")).alias("ts"),
        ns_to_utc(pl.col("ts")).alias("recv_ts"),
        pl.col("sym").replace_strict(list(range(3)), DEFAULT_SYMBOLS, return_dtype=pl.String).alias("symbol"),
        "price",
        "qty",
        pl.when("buy").then(pl.lit("buy")).otherwise(pl.lit("sell")).alias("side"),
        pl.format("bench-{}-{}", pl.lit(seed), "id").alias("trade_id"),
    )
    with ParquetLog(data_dir, "ticks").writer() as w:
        for (sym,), part in frame.group_by("symbol"):
            w.append(sym, part)
    return frame.height


def step_ms(data_dir: Path, repeats: int = 9) -> tuple[float, int]:
    """Median time of one incremental step after 60 s of new ticks, and the ticks per step.

    One builder serves all the steps, as in `rtml features --follow`; its first step (which
    also loads the recent features rows into memory) is not counted.
    """
    from rtml_cli.features import FeatureBuilder, FeatureSpec

    times, added = [], 0
    with FeatureBuilder(data_dir, FeatureSpec()) as builder:
        for i in range(repeats + 1):
            added = append_seconds(data_dir, 60, seed=1000 + i)
            t0 = time.perf_counter()
            rep = builder.step()
            if i:
                times.append((time.perf_counter() - t0) * 1000)
            assert rep.ticks == added and rep.bars >= 3, rep
    return statistics.median(times), added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=10_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        for d, n in ((big, args.ticks), (small, args.ticks // 10)):
            run(rtml("ingest", "--max-ticks", str(n), "--json", "--data-dir", str(d)))
        # Best of three: a 2-core machine's timings wander by tens of percent.
        floors = [run([sys.executable, "-c", FLOOR, str(big)]) for _ in range(3)]
        floor_s, bars_floor = min(f[0] for f in floors), int(floors[0][1].strip())
        builds = [run(rtml("features", "--rebuild", "--json", "--data-dir", str(big))) for _ in range(3)]
        build_s, built = min(b[0] for b in builds), json.loads(builds[-1][1])
        run(rtml("features", "--json", "--data-dir", str(small)))
        big_ms, added = step_ms(big)
        small_ms, _ = step_ms(small)

    results = {
        "ticks": args.ticks,
        "bars (floor query)": bars_floor,
        "features rows": sum(s["features_rows"] for s in built["symbols"].values()),
        "floor_duckdb_ohlcv_s": round(floor_s, 3),
        "one_shot_features_s": round(build_s, 3),
        "one_shot_over_floor": round(build_s / floor_s, 2),
        "ticks_per_incremental_step (60 s)": added,
        "incremental_step_ms": round(big_ms, 1),
        "incremental_step_ms_log_10x_smaller": round(small_ms, 1),
        "incremental_big_over_small": round(big_ms / small_ms, 2),
    }
    if not show(results, args.json):
        return
    print(f"target: one-shot <= 3x floor -> {results['one_shot_over_floor']}x")
    print(
        f"target: incremental step < 200 ms -> {big_ms:.1f} ms; <= 2x the 10x smaller log -> "
        f"{results['incremental_big_over_small']}x"
    )


if __name__ == "__main__":
    main()
