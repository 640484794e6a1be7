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
NOT_FEATURES = frozenset(
    {
        "offset",
        "ts",
        "symbol",
        "target",
        "open",
        "high",
        "low",
        "close",
        "vwap",
        "volume",
        "n_trades",
        "buy_volume",
        "sell_volume",
    }
)


def feature_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in NOT_FEATURES]


def model_inputs(
    frame: pl.DataFrame, columns: list[str], *extra: str | pl.Expr
) -> Iterator[tuple[dict[str, float], tuple]]:
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
            yield {c: v for c, v in zip(columns, row, strict=False) if v is not None}, row
        else:
            yield dict(zip(columns, row, strict=False)), row  # zip stops at the last feature


def predict_value(model: Any, kind: str, x: dict[str, float]) -> float:
    """A number for every model: a regressor's prediction; a classifier's expected sign,
    P(up) - P(down), in [-1, 1].

    River's binary classifiers label their classes False/True (True: the target was
    positive, False: it was not), multiclass ones by the labels they learned (-1, 0, 1).
    """
    if kind == CLASSIFIER:
        proba = model.predict_proba_one(x)
        return float(sum(_class_sign(c) * p for c, p in proba.items())) if proba else 0.0
    y = model.predict_one(x)
    return float(y) if y is not None else 0.0


def _class_sign(label: Any) -> float:
    if isinstance(label, bool):
        return 1.0 if label else -1.0
    return float((label > 0) - (label < 0))


# A prediction is a sign of divergence when it is not finite, or when it is this many times
# the mean absolute target learned so far (judged once MIN_TARGETS targets are known): a
# model predicting a thousand typical moves has blown up, whatever the data's scale.
DIVERGENCE_FACTOR = 1_000.0
MIN_TARGETS = 20


def divergence_bound(abs_sum: float, n: int) -> float:
    """The largest |prediction| still taken as sane after `n` targets of summed size `abs_sum`."""
    return DIVERGENCE_FACTOR * abs_sum / n if n >= MIN_TARGETS and abs_sum > 0 else math.inf


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
    """A model learning a stream of examples prequentially, with metrics, drift detection and
    a watch on its own predictions.

    `on_drift="reset"` replaces the model with a fresh one from `make_model` when ADWIN finds
    a change in the absolute error; "ignore" only counts it. A prediction that is not finite,
    or far outside the scale of the targets learned so far (see `divergence_bound`), marks
    the model as diverged: `diverged` then says when and how, until the model is replaced.
    """

    def __init__(
        self,
        model: Any,
        kind: str,
        make_model: Callable[[], Any],
        on_drift: str = "ignore",
        window: int = 500,
        learned: int = 0,
        drifts: int = 0,
        health: dict[str, Any] | None = None,
    ):
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
        health = health or {}
        self.targets_seen = int(health.get("targets_seen", 0))
        self.target_abs_sum = float(health.get("target_abs_sum", 0.0))
        self.diverged: dict[str, Any] | None = health.get("diverged")
        self._bound = divergence_bound(self.target_abs_sum, self.targets_seen)

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
        if not abs(y_pred) <= self._bound and self.diverged is None:  # also true for NaN
            self._diverge(y_pred)
        if self.metrics is not None:
            self.metrics.update(y, y_pred)
        self.detector.update(abs(y_pred - y))
        drifted = self.detector.drift_detected
        if drifted:
            self.drifts += 1
            if self.on_drift == "reset":
                self.model = self.make_model()
                self.diverged = None
        self.model.learn_one(x, int(y) if self.kind == CLASSIFIER else y)
        self.learned += 1
        self.targets_seen += 1
        self.target_abs_sum += abs(y)
        self._bound = divergence_bound(self.target_abs_sum, self.targets_seen)
        return drifted

    def _diverge(self, y_pred: float) -> None:
        scale = self.target_abs_sum / self.targets_seen if self.targets_seen else None
        self.diverged = {
            "at_example": self.learned + 1,
            "prediction": y_pred if math.isfinite(y_pred) else str(y_pred),  # JSON has no inf or nan
            "mean_abs_target": scale,
            "why": (
                f"prediction {y_pred:.4g} is {abs(y_pred) / scale:,.0f}x the mean absolute target ({scale:.3g})"
                if math.isfinite(y_pred) and scale
                else f"prediction {y_pred:.4g} is not a number"
            ),
        }

    def health(self) -> dict[str, Any]:
        """What a checkpoint keeps of the watch: the targets' scale, and the divergence if any."""
        return {"targets_seen": self.targets_seen, "target_abs_sum": self.target_abs_sum, "diverged": self.diverged}
