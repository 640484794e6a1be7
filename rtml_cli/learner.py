"""The prequential step shared by `rtml train` and `rtml backtest`: predict, score, then learn.

Each example is first predicted by the model as it stands (so the error is an honest
out-of-sample error), the rolling metrics and the drift detector see that error, and only
then does the model learn the example.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rtml_cli.models import CLASSIFIER

if TYPE_CHECKING:
    import polars as pl

# Columns of an examples row that are never model inputs: ids, times, raw price and volume
# levels (scale-dependent, so they would make the model about the price, not the move).
NOT_FEATURES = frozenset({
    "offset", "ts", "symbol", "target", "open", "high", "low", "close", "vwap",
    "volume", "n_trades", "buy_volume", "sell_volume",
})


def feature_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in NOT_FEATURES]


def model_inputs(frame: pl.DataFrame, columns: list[str], *extra: str | pl.Expr) -> Iterator[tuple[dict[str, float], tuple]]:
    """Each row of `frame` as the model's input (the finite values of the feature `columns`),
    with the row itself, whose values after the features are the `extra` columns.

    Train, predict and backtest all build inputs here, so a model sees the same dict for
    the same row in every stage.
    """
    import polars as pl

    # NaN and infinities become missing values here, once, so the loop only skips None.
    clean = [pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in columns]
    for row in frame.select(*clean, *extra).iter_rows():
        if None in row:
            yield {c: v for c, v in zip(columns, row) if v is not None}, row
        else:
            yield dict(zip(columns, row)), row  # zip stops at the last feature


def predict_value(model: Any, kind: str, x: dict[str, float]) -> float:
    """A number for every model: a classifier's is the expected class, in [-1, 1] for signs."""
    if kind == CLASSIFIER:
        proba = model.predict_proba_one(x)
        return float(sum(float(c) * p for c, p in proba.items())) if proba else 0.0
    y = model.predict_one(x)
    return float(y) if y is not None else 0.0


class RollingMetrics:
    """MAE, RMSE and directional accuracy over the last `window` predictions.

    Updating only appends (it runs once per example); the sums are taken when asked for,
    which happens once per checkpoint or status line.
    """

    def __init__(self, window: int = 500):
        self.window = window
        self._errors: deque[float] = deque(maxlen=window)
        self._hits: deque[bool] = deque(maxlen=window)  # examples with a zero target are left out

    def update(self, y_true: float, y_pred: float) -> None:
        finite = math.isfinite(y_pred)
        self._errors.append(y_pred - y_true if finite else math.inf)
        if y_true != 0:
            self._hits.append(finite and y_pred != 0 and (y_pred > 0) == (y_true > 0))

    def as_dict(self) -> dict[str, float | int | None]:
        n = len(self._errors)
        mae = sum(abs(e) for e in self._errors) / n if n else None
        rmse = math.sqrt(sum(e * e for e in self._errors) / n) if n else None
        return {
            "window": self.window,
            "n": n,
            # a diverged model's error is reported as null: JSON has no infinity
            "mae": mae if mae is not None and math.isfinite(mae) else None,
            "rmse": rmse if rmse is not None and math.isfinite(rmse) else None,
            "hit_rate": sum(self._hits) / len(self._hits) if self._hits else None,
        }


class Learner:
    """A model learning a stream of examples prequentially, with metrics and drift detection.

    `on_drift="reset"` replaces the model with a fresh one from `make_model` when ADWIN finds
    a change in the absolute error; "ignore" only counts it.
    """

    def __init__(self, model: Any, kind: str, make_model: Callable[[], Any], on_drift: str = "ignore",
                 window: int = 500, learned: int = 0, drifts: int = 0):
        from river import drift

        if on_drift not in ("ignore", "reset"):
            raise ValueError(f"on_drift must be 'ignore' or 'reset', not {on_drift!r}")
        self.model = model
        self.kind = kind
        self.make_model = make_model
        self.on_drift = on_drift
        self.metrics = RollingMetrics(window) if window else None  # a backtest scores afterwards
        self.detector = drift.ADWIN()
        self.learned = learned
        self.drifts = drifts

    def predict(self, x: dict[str, float]) -> float:
        return predict_value(self.model, self.kind, x)

    def step(self, x: dict[str, float], y: float) -> float:
        """Predict `x`, score the prediction against `y`, then learn (x, y); returns the prediction."""
        y_pred = self.predict(x)
        self.learn(x, y, y_pred)
        return y_pred

    def learn(self, x: dict[str, float], y: float, y_pred: float) -> bool:
        """Score `y_pred`, made before `y` was known, then learn (x, y); True if drift was found.

        `step` calls it at once; a backtest with a label delay calls it when the label is due.
        """
        if self.metrics is not None:
            self.metrics.update(y, y_pred)
        self.detector.update(abs(y_pred - y))
        drifted = self.detector.drift_detected
        if drifted:
            self.drifts += 1
            if self.on_drift == "reset":
                self.model = self.make_model()
        self.model.learn_one(x, int(y) if self.kind == CLASSIFIER else y)
        self.learned += 1
        return drifted
