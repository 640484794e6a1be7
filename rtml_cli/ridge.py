"""Ridge regression with exponential forgetting: rtml's default online model for drifting, noisy targets.

Each example learned adds x x' and x y to running sums that decay by `1 - 1/memory` per
example, so the last `memory` or so examples count; the weights are the exact ridge
solution of those sums, `w = (A + ridge * memory * I)^-1 b`, recomputed after each
example (no step size: it cannot diverge the way stochastic gradient descent can). The
penalty does not decay with the data: it is worth `ridge` memories of standardised
examples, so the weights stay shrunk toward zero (no move) unless the data insist. For a
signal as faint as a short-term return's, that shrinkage is what lets predictions beat
predicting nothing in absolute error.

The inputs should be standardised (`StandardScaler` before it) and the target centred
(`TargetStandardScaler` around it), as rtml's `linear` spec does; a feature missing from an
example counts as 0 (its mean, after the scaler).
"""

from __future__ import annotations

import numpy as np
from river import base


class ForgettingRidge(base.Regressor):
    """Exponentially weighted ridge regression (recursive least squares with forgetting and
    a constant penalty), without an intercept.

    >>> model = ForgettingRidge(memory=50, ridge=0.1)
    >>> for i in range(200):
    ...     x = {"a": (i % 7) - 3.0, "b": (i % 5) - 2.0}
    ...     model.learn_one(x, 2 * x["a"] - x["b"])
    >>> {name: round(w, 2) for name, w in model.weights.items()}  # 2 and -1, shrunk a little
    {'a': 1.95, 'b': -0.95}
    """

    def __init__(self, memory: float = 500.0, ridge: float = 4.0):
        if memory < 1 or ridge < 0:
            raise ValueError(f"memory must be >= 1 and ridge >= 0, not {memory} and {ridge}")
        self.memory = memory
        self.ridge = ridge
        self._index: dict = {}
        self._names: list = []
        self._a = np.zeros((0, 0))
        self._b = np.zeros(0)
        self._w = np.zeros(0)

    @property
    def weights(self) -> dict:
        return dict(zip(self._names, self._w.tolist()))

    def _grow(self, x: dict) -> None:
        for name in x:
            if name not in self._index:
                self._index[name] = len(self._names)
                self._names.append(name)
        n = len(self._names)
        a = np.zeros((n, n))
        a[: len(self._b), : len(self._b)] = self._a
        self._a = a
        self._b = np.concatenate([self._b, np.zeros(n - len(self._b))])
        self._w = np.concatenate([self._w, np.zeros(n - len(self._w))])

    def _vector(self, x: dict) -> np.ndarray:
        v = np.zeros(len(self._names))
        index = self._index
        for name, value in x.items():
            i = index.get(name)
            if i is not None:
                v[i] = value
        return v

    def predict_one(self, x: dict) -> float:
        if not self._names:
            return 0.0
        return float(self._vector(x) @ self._w)

    def learn_one(self, x: dict, y: float) -> None:
        if any(name not in self._index for name in x):
            self._grow(x)
        v = self._vector(x)
        keep = 1.0 - 1.0 / self.memory
        self._a *= keep
        self._a += np.outer(v, v)
        self._b *= keep
        self._b += v * y
        penalty = self.ridge * self.memory
        self._w = np.linalg.solve(self._a + penalty * np.eye(len(v)), self._b)
