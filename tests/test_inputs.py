"""A backtest's inputs on disk: streamed back, they are exactly the dicts `learner.model_inputs`
builds from the same rows in the same order (what the trainer and the predictor see)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import polars as pl
import pytest

from rtml_cli.inputs import CHUNK_ROWS, write_rows
from rtml_cli.learner import model_inputs


def messy(n: int, seed: int) -> pl.DataFrame:
    """Floats with NaN, infinities, nulls and -0.0, integers, decimals."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    a[rng.integers(0, n, n // 50)] = np.nan
    a[rng.integers(0, n, n // 80)] = np.inf
    a[rng.integers(0, n, n // 90)] = -np.inf
    a[::97] = -0.0
    b = pl.Series(rng.standard_normal(n) * 1e-300).scatter(rng.integers(0, n, n // 40), None)
    return pl.DataFrame(
        {
            "a": a,
            "b": b,
            "i": rng.integers(-(2**40), 2**40, n),
            "d": pl.Series([Decimal(f"{v:.6f}") for v in rng.standard_normal(n)], dtype=pl.Decimal(12, 6)),
        }
    )


def expected(frame: pl.DataFrame, order: np.ndarray, start: int = 0) -> list[dict]:
    cols = ["a", "b", "i", "d"]
    ordered = frame[order.tolist()].select(pl.col(c).cast(pl.Float64) for c in cols)
    return [x for x, _ in model_inputs(ordered, cols)][start:]


@pytest.mark.parametrize("kind", ["in order", "shuffled", "two files"])
def test_the_rows_streamed_back_are_the_trainers_dicts(tmp_path, kind):
    n = 2 * CHUNK_ROWS + 1234  # more than one row group
    frame = messy(n, 1)
    rng = np.random.default_rng(2)
    if kind == "two files":  # the second file lacks a column: missing there
        frame.head(1000).write_parquet(tmp_path / "s0.parquet")
        frame.slice(1000).drop("d").write_parquet(tmp_path / "s1.parquet")
        files = [tmp_path / "s0.parquet", tmp_path / "s1.parquet"]
        frame = pl.concat([frame.head(1000), frame.slice(1000).with_columns(d=None)], how="vertical_relaxed")
    else:
        frame.write_parquet(tmp_path / "s.parquet", row_group_size=10_000)
        files = [tmp_path / "s.parquet"]
    order = rng.permutation(n)[: n - 500] if kind != "in order" else np.flatnonzero(rng.random(n) < 0.9)
    # unsigned row numbers, as polars' row index gives them: a decreasing step must not wrap
    rows = write_rows(files, order.astype(np.uint32), ["a", "b", "i", "d"], tmp_path / "rows.parquet")
    assert rows.n == len(order)
    want = expected(frame, order)
    got = list(rows)
    assert got == want  # NaN and infinities are dropped from a dict, so == is exact here
    assert [list(x) for x in got] == [list(x) for x in want]  # and the keys in the same order
    assert list(rows.iter(CHUNK_ROWS + 7)) == want[CHUNK_ROWS + 7 :]  # from the middle of a row group
    # only some rows (one job's symbols), none of them in the second row group, from the middle of the first
    only = rng.random(rows.n) < 0.3
    only[CHUNK_ROWS : 2 * CHUNK_ROWS] = False
    assert list(rows.iter(77, only)) == [x for k, x in enumerate(want) if k >= 77 and only[k]]
    assert any(x["a"] == 0.0 and np.copysign(1, x["a"]) < 0 for x in got if "a" in x)  # -0.0 kept


def test_no_rows_and_no_features_still_make_a_file_that_streams(tmp_path):
    pl.DataFrame({"a": [1.0, 2.0]}).write_parquet(tmp_path / "s.parquet")
    assert list(write_rows([tmp_path / "s.parquet"], np.array([], dtype=np.int64), ["a"], tmp_path / "r.parquet")) == []
