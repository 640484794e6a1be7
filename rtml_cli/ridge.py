"""Ridge regression with exponential forgetting: rtml's default online model for drifting, noisy targets.

The model keeps two memories of the examples it has learned, both exponential:

- a long one (`scale_memory` examples) of each input's and the target's mean and standard
  deviation. Inputs are standardised with it and clipped to +-`clip` deviations, targets
  clipped the same way, and the statistics themselves learn the clipped values: one bad print
  (a trade at a tenth of the price) moves an input by `clip` deviations, not by thousands,
  and does not blow the scale up for the examples after it;
- a short one (`memory` examples) of the standardised examples, from which the weights are
  the exact ridge solution `w = (Z'WZ + ridge * memory * I)^-1 Z'W(y - mean)`, recomputed after
  each example. There is no step size, so it cannot diverge the way stochastic gradient
  descent can, and the prediction, `mean + z.w`, is on the target's own scale.

The penalty does not decay with the data: it is worth `ridge` memories of standardised
examples, so the weights stay shrunk toward the long-run mean (for returns: about no move)
unless the recent data insist. For a signal as faint as a short-term return's, that shrinkage
is what lets predictions beat predicting nothing in absolute error; the short memory is what
lets the weights follow a relationship that drifts.
"""

from __future__ import annotations

import math

import numpy as np
from river import base
from scipy.linalg.lapack import dposv


class ForgettingRidge(base.Regressor):
    """Exponentially weighted ridge regression on standardised, clipped inputs.

    >>> model = ForgettingRidge(memory=50, ridge=0.1)
    >>> for i in range(300):
    ...     x = {"a": (i % 7) - 3.0, "b": (i % 5) - 2.0}
    ...     model.learn_one(x, 10 + 2 * x["a"] - x["b"])
    >>> round(model.predict_one({"a": 1.0, "b": 1.0}), 1)  # 10 + 2 - 1, shrunk a little toward 10
    10.9
    """

    def __init__(self, memory: float = 500.0, ridge: float = 4.0, clip: float = 5.0, scale_memory: float = 5000.0):
        if not (memory >= 1 and scale_memory >= 1 and ridge >= 0 and clip > 0):
            raise ValueError(
                f"memory and scale_memory must be >= 1, ridge >= 0 and clip > 0, not {memory}, "
                f"{scale_memory}, {ridge} and {clip}"
            )
        self.memory = memory
        self.ridge = ridge
        self.clip = clip
        self.scale_memory = scale_memory
        self._index: dict = {}
        self._names: list = []
        self._n = 0.0  # decayed count of the examples in the long memory (the target's statistics)
        self._mean_y = 0.0  # the (clipped) targets' mean, and decayed sum of squared deviations
        self._m2_y = 0.0
        self._cnt = np.zeros(0)  # per input: decayed count of the examples that had it,
        self._mean = np.zeros(0)  # the mean of its (clipped) values,
        self._m2 = np.zeros(0)  # and their decayed sum of squared deviations (Welford: no cancellation)
        self._zz = np.zeros((0, 0))  # the short memory's decayed sums of z z' and z (y - mean)
        self._zy = np.zeros(0)
        self._w = np.zeros(0)
        self._penalty = np.zeros((0, 0))
        self._rescale()

    def __setstate__(self, state: dict) -> None:
        if "_cnt" not in state:
            raise ValueError(
                "this ForgettingRidge was saved by an earlier rtml, whose state this version does not "
                "read; train the model afresh (`rtml train --fresh`, or another --name)"
            )
        self.__dict__.update(state)

    @property
    def weights(self) -> dict:
        """The weights of the standardised inputs."""
        return dict(zip(self._names, self._w.tolist(), strict=True))

    def _grow(self, x: dict) -> None:
        for name in x:
            if name not in self._index:
                self._index[name] = len(self._names)
                self._names.append(name)
        n, old = len(self._names), len(self._cnt)
        self._cnt, self._mean, self._m2, self._zy, self._w = (
            np.concatenate([v, np.zeros(n - old)]) for v in (self._cnt, self._mean, self._m2, self._zy, self._w)
        )
        zz = np.zeros((n, n))
        zz[:old, :old] = self._zz
        self._zz = zz
        self._penalty = self.ridge * self.memory * np.eye(n)
        self._rescale()

    def _rescale(self) -> None:
        """The deviations of the examples learned, and what follows from them: computed once
        per example learned, used by every prediction until the next."""
        k = len(self._names)
        if self._cnt.all():
            sd = np.sqrt(self._m2 / self._cnt)
        else:  # an input not seen yet
            sd = np.sqrt(np.divide(self._m2, self._cnt, out=np.zeros(k), where=self._cnt > 0))
        self._lo, self._hi = self._mean - self.clip * sd, self._mean + self.clip * sd
        if sd.all():
            self._inv_sd = 1.0 / sd
        else:  # an input that has not varied (or not been seen) is not scaled (its z is 0) nor clipped
            spread = sd > 0
            self._inv_sd = np.divide(1.0, sd, out=np.zeros(k), where=spread)
            self._lo[~spread], self._hi[~spread] = -np.inf, np.inf
        sd_y = math.sqrt(self._m2_y / self._n) if self._n > 0 else 0.0
        self._y_lo, self._y_hi = (
            (self._mean_y - self.clip * sd_y, self._mean_y + self.clip * sd_y) if sd_y > 0 else (-math.inf, math.inf)
        )

    def _inputs(self, x: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The inputs in the model's order, clipped to +-clip deviations (a missing one, or
        NaN, at its mean), their standardised values z, and which were given (None: all)."""
        v = np.array([x.get(name, math.nan) for name in self._names], dtype=float)
        seen = None
        total = v.sum()
        if total != total:  # a NaN: some input is missing
            seen = v == v
            v = np.where(seen, v, self._mean)
        v = np.minimum(np.maximum(v, self._lo), self._hi)
        return v, (v - self._mean) * self._inv_sd, seen

    def predict_one(self, x: dict) -> float:
        if self._n == 0:
            return 0.0
        return float(self._mean_y + self._inputs(x)[1] @ self._w)

    def learn_one(self, x: dict, y: float) -> None:
        if not x.keys() <= self._index.keys():
            self._grow(x)
        v, z, seen = self._inputs(x)  # on the scale known before this example, as its prediction was made
        if self._n > 0:
            y = min(max(y, self._y_lo), self._y_hi)
            keep = 1.0 - 1.0 / self.memory
            self._zz *= keep
            self._zz += z[:, None] * z
            self._zy *= keep
            self._zy += z * (y - self._mean_y)
            self._w = _solve(self._zz + self._penalty, self._zy)
        # the long memory: exponentially weighted Welford updates, of the inputs this example had
        fade = 1.0 - 1.0 / self.scale_memory
        delta = v - self._mean
        if seen is None:  # every input given: the usual case
            self._cnt = fade * self._cnt + 1.0
            self._mean = self._mean + delta / self._cnt
            self._m2 = fade * self._m2 + delta * (v - self._mean)
        else:
            cnt = np.where(seen, fade * self._cnt + 1.0, self._cnt)
            mean = self._mean + np.divide(delta, cnt, out=np.zeros(len(cnt)), where=seen)
            self._m2 = np.where(seen, fade * self._m2 + delta * (v - mean), self._m2)
            self._cnt, self._mean = cnt, mean
        self._n = fade * self._n + 1.0
        delta_y = y - self._mean_y
        self._mean_y += delta_y / self._n
        self._m2_y = fade * self._m2_y + delta_y * (y - self._mean_y)
        self._rescale()


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^-1 b for a symmetric a: by Cholesky (LAPACK's dposv, without numpy's per-call checks,
    which cost more than the solve at this size); least squares if a is singular (ridge 0)."""
    _, w, info = dposv(a.T, b)  # a.T: the same (symmetric) matrix, in the order LAPACK reads
    return w if info == 0 else np.linalg.lstsq(a, b, rcond=None)[0]
