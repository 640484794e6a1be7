"""Run the two real-data backtests of docs/results.md and write their tables into it.

Run: `.venv/bin/python tools/backtest_results.py` (or `make results`). It takes a few
minutes: River's SP500Stocks (in River's wheel, no download) and two weeks of the simulated
market (the history `make demo` builds), through the same commands a user types.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:backtest -->", "<!-- /results:backtest -->"


def rtml(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "rtml_cli", *args], check=True, capture_output=True, text=True)
    return out.stdout


def main() -> None:
    import polars as pl
    from river import datasets

    with tempfile.TemporaryDirectory(prefix="rtml-results-") as tmp:
        sp = Path(tmp) / "sp500.parquet"
        pl.DataFrame([{**x, "target": y} for x, y in datasets.SP500Stocks()]).write_parquet(sp)
        sp_args = [
            "--table",
            str(sp),
            "--target",
            "target",
            "--returns",
            "percent",
            "--warmup",
            "250",
            "--refresh",
            "1,5,21,63,never",
            "--model",
            "linear",
            "--model",
            "sgd",
            "--model",
            "bayes",
            "--model",
            "hat",
            "--jobs",
            "2",
        ]
        sp_out = rtml("backtest", *sp_args).replace(str(sp), "sp500.parquet")

        d = str(Path(tmp) / "market")
        rtml("ingest", "--max-ticks", "12600000", "--json", "--data-dir", d)
        rtml("features", "--json", "--data-dir", d)
        mk_args = [
            "--warmup",
            "1000",
            "--refresh",
            "1,10,60,240,1440,never",
            "--model",
            "linear",
            "--model",
            "sgd",
            "--model",
            "bayes",
            "--jobs",
            "2",
        ]
        mk_out = rtml("backtest", *mk_args, "--data-dir", d).replace(d, "data")

    def block(title: str, cmd: list[str], out: str) -> str:
        shown = " ".join(a if not a.startswith("/") else Path(a).name for a in cmd)
        return f"{title}\n\n```\n$ rtml backtest {shown}\n{out.rstrip()}\n```\n"

    text = (
        f"{START}\n"
        + block(
            "**River's `SP500Stocks`** (1,257 trading days; features: the ten stocks' returns that day; "
            "target: the next day's return of the equal-weighted ten, in percent):",
            [a if a != str(sp) else "sp500.parquet" for a in sp_args],
            sp_out,
        )
        + "\n"
        + block(
            "**The simulated market** (12.6M trades: two weeks, 3 symbols, 1-minute bars, horizon 5; "
            "`rtml ingest --max-ticks 12600000 && rtml features`):",
            mk_args,
            mk_out,
        )
        + END
    )
    readme = ROOT / "docs" / "results.md"
    body = readme.read_text()
    body = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: text, body, flags=re.S)
    readme.write_text(body)
    print(text)


if __name__ == "__main__":
    main()
