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
            raise ValueError(f"memory and scale_memory must be >= 1, ridge >= 0 and clip > 0, not {memory}, "
                             f"{scale_memory}, {ridge} and {clip}")
        self.memory = memory
        self.ridge = ridge
        self.clip = clip
        self.scale_memory = scale_memory
        self._index: dict = {}
        self._names: list = []
        self._n = 0.0  # decayed count of the long memory
        self._x1 = np.zeros(0)  # its decayed sums of the (clipped) inputs and their squares
        self._x2 = np.zeros(0)
        self._y1 = 0.0  # ... of the (clipped) targets and their squares
        self._y2 = 0.0
        self._zz = np.zeros((0, 0))  # the short memory's decayed sums of z z' and z (y - mean)
        self._zy = np.zeros(0)
        self._w = np.zeros(0)

    @property
    def weights(self) -> dict:
        """The weights of the standardised inputs."""
        return dict(zip(self._names, self._w.tolist()))

    def _grow(self, x: dict) -> None:
        for name in x:
            if name not in self._index:
                self._index[name] = len(self._names)
                self._names.append(name)
        n, old = len(self._names), len(self._x1)
        self._x1, self._x2, self._zy, self._w = (np.concatenate([v, np.zeros(n - old)])
                                                 for v in (self._x1, self._x2, self._zy, self._w))
        zz = np.zeros((n, n))
        zz[:old, :old] = self._zz
        self._zz = zz

    def _vector(self, x: dict) -> tuple[np.ndarray, np.ndarray]:
        v = np.zeros(len(self._names))
        seen = np.zeros(len(self._names), dtype=bool)
        for name, value in x.items():
            i = self._index.get(name)
            if i is not None:
                v[i] = value
                seen[i] = True
        return v, seen

    def _scale(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Means and deviations of the inputs and of the target, as of the examples learned."""
        n = self._n
        mean, mean_y = self._x1 / n, self._y1 / n
        sd = np.sqrt(np.maximum(self._x2 / n - mean * mean, 0.0))
        return mean, sd, mean_y, math.sqrt(max(self._y2 / n - mean_y * mean_y, 0.0))

    def predict_one(self, x: dict) -> float:
        if self._n == 0:
            return 0.0
        mean, sd, mean_y, _ = self._scale()
        v, seen = self._vector(x)
        return float(mean_y + self._z(v, seen, mean, sd) @ self._w)

    def _z(self, v: np.ndarray, seen: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """Deviations from the means in standard deviations, clipped; a missing input is at its mean."""
        z = np.divide(v - mean, sd, out=np.zeros(len(v)), where=(sd > 0) & seen)
        return np.clip(z, -self.clip, self.clip)

    def learn_one(self, x: dict, y: float) -> None:
        if any(name not in self._index for name in x):
            self._grow(x)
        v, seen = self._vector(x)
        if self._n > 0:  # on the scale known before this example, as its prediction was made
            mean, sd, mean_y, sd_y = self._scale()
            z = self._z(v, seen, mean, sd)
            v = np.where(sd > 0, np.clip(v, mean - self.clip * sd, mean + self.clip * sd), v)
            v = np.where(seen, v, mean)  # a missing input leaves its mean where it was
            if sd_y > 0:
                y = min(max(y, mean_y - self.clip * sd_y), mean_y + self.clip * sd_y)
            keep = 1.0 - 1.0 / self.memory
            self._zz *= keep
            self._zz += np.outer(z, z)
            self._zy = keep * self._zy + z * (y - mean_y)
            self._w = np.linalg.solve(self._zz + self.ridge * self.memory * np.eye(len(z)), self._zy)
        fade = 1.0 - 1.0 / self.scale_memory
        self._n = fade * self._n + 1.0
        self._x1 = fade * self._x1 + v
        self._x2 = fade * self._x2 + v * v
        self._y1 = fade * self._y1 + y
        self._y2 = fade * self._y2 + y * y
