"""Ingest benchmark: replay of a 2M-row Binance CSV against the polars floor, synthetic rate, memory.

Run: `make bench` or `.venv/bin/python bench/ingest.py [--rows 2000000]`.
Every figure is measured in this run; the ratios compare commands run the same way
(each a fresh process: interpreter start, imports, work), best of three.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from report import show  # bench/report.py, beside this script

FLOOR = """
import sys, polars as pl
pl.read_csv(sys.argv[1], has_header=False).write_parquet(sys.argv[2])
"""


def make_binance_csv(path: Path, rows: int, seed: int = 1) -> None:
    """A Binance spot trades dump (no header, millisecond times, as before 2025)."""
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with open(path, "wb") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = np.arange(start, start + n) + 1_000_000_000
            price = np.round(42_000 + np.cumsum(rng.standard_normal(n)) * 0.5, 2)
            qty = np.round(rng.exponential(0.05, n) + 1e-5, 5)
            pl.DataFrame(
                {
                    "id": ids,
                    "price": price,
                    "qty": qty,
                    "quoteQty": np.round(price * qty, 6),
                    "time": 1_704_067_200_000 + (ids - 1_000_000_000) * 5,
                    "isBuyerMaker": rng.random(n) < 0.5,
                    "isBestMatch": np.ones(n, dtype=bool),
                }
            ).with_columns(pl.col("isBuyerMaker", "isBestMatch").cast(pl.String).str.to_lowercase()).write_csv(
                f, include_header=False
            )


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB, and stdout of one command.

    Memory is measured by GNU time around the command: a child forked straight from this
    process would count this process's memory, copied at the fork, as its own peak.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
        return wall, int(rss.read().strip().splitlines()[-1]) / 1024, proc.stdout


def rtml(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtml_cli", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--synthetic-ticks", type=int, default=2_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        tmp = Path(tmp)
        csv = tmp / "BTCUSDT-trades-2024-01-01.csv"
        make_binance_csv(csv, args.rows)
        csv_mb = csv.stat().st_size / 1e6
        big = tmp / "BTCUSDT-trades-2024-01-02.csv"
        make_binance_csv(big, 4 * args.rows, seed=2)

        # Best of three for the ratio: a 2-core machine's timings wander by tens of percent.
        floor_runs = [timed([sys.executable, "-c", FLOOR, str(csv), str(tmp / "floor.parquet")]) for _ in range(3)]
        floor_s, floor_mb = min(r[0] for r in floor_runs), max(r[1] for r in floor_runs)
        replay_runs = []
        for i in range(3):
            into = tmp / ("a" if i == 0 else f"a{i}")
            wall, mb, out = timed(
                rtml("ingest", "--source", "replay", "--path", str(csv), "--json", "--data-dir", str(into))
            )
            assert json.loads(out)["written"] == args.rows, out
            replay_runs.append((wall, mb))
        replay_s, replay_mb = min(r[0] for r in replay_runs), max(r[1] for r in replay_runs)
        big_s, big_mb, out = timed(
            rtml("ingest", "--source", "replay", "--path", str(big), "--json", "--data-dir", str(tmp / "b"))
        )
        assert json.loads(out)["written"] == 4 * args.rows
        again_s, _, out = timed(
            rtml("ingest", "--source", "replay", "--path", str(csv), "--json", "--data-dir", str(tmp / "a"))
        )
        assert json.loads(out)["written"] == 0

        syn_s, _syn_mb, out = timed(
            rtml(
                "ingest",
                "--speed",
                "max",
                "--max-ticks",
                str(args.synthetic_ticks),
                "--json",
                "--data-dir",
                str(tmp / "s"),
            )
        )
        syn = json.loads(out)

        from threading import Event

        from rtml_cli.sources.synthetic import SyntheticSource

        t0 = time.perf_counter()
        src = SyntheticSource(["BTC/USD", "ETH/USD", "SOL/USD"], 42, 1_767_225_600 * 10**9, args.synthetic_ticks)
        generated = sum(b.frame.height for b in src.batches(Event()))
        gen_rate = generated / (time.perf_counter() - t0)

    results = {
        "rows": args.rows,
        "csv_mb": round(csv_mb, 1),
        "floor_polars_csv_to_parquet_s": round(floor_s, 3),
        "replay_ingest_s": round(replay_s, 3),
        "replay_over_floor": round(replay_s / floor_s, 2),
        "replay_rows_per_s": round(args.rows / replay_s),
        "replay_again_s (all duplicates)": round(again_s, 3),
        "replay_peak_rss_mb": round(replay_mb),
        "replay_4x_rows_peak_rss_mb": round(big_mb),
        "replay_4x_rows_s": round(big_s, 3),
        "floor_peak_rss_mb": round(floor_mb),
        "synthetic_ingest_ticks_per_s (in-process, as reported)": syn["ticks_per_s"],
        "synthetic_ingest_wall_s (whole command)": round(syn_s, 3),
        "synthetic_generation_ticks_per_s (simulator alone)": round(gen_rate),
    }
    if not show(results, args.json):
        return
    print(
        f"target: replay <= 4x floor -> {results['replay_over_floor']}x "
        f"({'met' if results['replay_over_floor'] <= 4 else 'NOT met'})"
    )
    print(f"target: synthetic >= 500k ticks/s -> ingest {syn['ticks_per_s']:,.0f}/s, generator {gen_rate:,.0f}/s")
    print(f"memory: {replay_mb:.0f} MB for {args.rows:,} rows, {big_mb:.0f} MB for {4 * args.rows:,} rows")


if __name__ == "__main__":
    main()
