"""Named model specs: River pipelines that `rtml train` and `rtml backtest` build by name."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtml_cli.errors import ConfigError

REGRESSOR, CLASSIFIER = "regressor", "classifier"


@dataclass(frozen=True)
class ModelSpec:
    """A factory of fresh models, with its parameters and what kind of target it needs."""

    name: str
    description: str
    kind: str
    factory: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)

    def build(self, params: dict[str, Any] | None = None) -> Any:
        merged = {**self.defaults, **(params or {})}
        try:
            return self.factory(**merged)
        except TypeError as exc:
            raise ConfigError(f"model {self.name!r} does not take these parameters ({exc}); see `rtml models`") from None


def _linear(**kw):
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression(**kw)


def _pa(**kw):
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.PARegressor(**kw)


def _bayes(**kw):
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.BayesianLinearRegression(**kw)


def _hat(**kw):
    from river import preprocessing, tree

    return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeRegressor(**kw)


def _arf(**kw):
    from river import forest, preprocessing

    return preprocessing.StandardScaler() | forest.ARFRegressor(**kw)


def _knn(**kw):
    from river import neighbors, preprocessing

    return preprocessing.StandardScaler() | neighbors.KNNRegressor(**kw)


def _logistic(**kw):
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LogisticRegression(**kw)


def _hat_clf(**kw):
    from river import preprocessing, tree

    return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeClassifier(**kw)


def _arf_clf(**kw):
    from river import forest, preprocessing

    return preprocessing.StandardScaler() | forest.ARFClassifier(**kw)


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("linear", "StandardScaler | LinearRegression (River defaults): the baseline online regressor", REGRESSOR, _linear),
        ModelSpec("pa", "StandardScaler | PARegressor: passive-aggressive regression", REGRESSOR, _pa),
        ModelSpec("bayes", "StandardScaler | BayesianLinearRegression, with a forgetting factor for drift", REGRESSOR, _bayes,
                  {"smoothing": 0.999}),
        ModelSpec("hat", "StandardScaler | HoeffdingAdaptiveTreeRegressor: a tree that replaces drifting branches", REGRESSOR,
                  _hat, {"seed": 42}),
        ModelSpec("arf", "StandardScaler | ARFRegressor: adaptive random forest (big; checkpoints in a forked child)",
                  REGRESSOR, _arf, {"n_models": 10, "seed": 42}),
        ModelSpec("knn", "StandardScaler | KNNRegressor over a sliding window of recent examples", REGRESSOR, _knn),
        ModelSpec("logistic", "StandardScaler | LogisticRegression: classifier for --target sign", CLASSIFIER, _logistic),
        ModelSpec("hat-clf", "StandardScaler | HoeffdingAdaptiveTreeClassifier, for --target sign", CLASSIFIER, _hat_clf,
                  {"seed": 42}),
        ModelSpec("arf-clf", "StandardScaler | ARFClassifier: adaptive random forest, for --target sign", CLASSIFIER,
                  _arf_clf, {"n_models": 10, "seed": 42}),
    ]
}


def resolve(model: str) -> ModelSpec:
    """A registered spec by name, or a user's factory given as `module:function`.

    The module is imported and the attribute looked up by name; nothing is evaluated. A user
    factory takes the --param values as keyword arguments and returns a River estimator (a
    regressor, unless it sets `rtml_kind = "classifier"` on the function).
    """
    if model in SPECS:
        return SPECS[model]
    if ":" not in model:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(SPECS)} (see `rtml models`), or give module:factory")
    module_name, _, attr = model.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for --model {model} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attr!r} for --model {model}")
    kind = getattr(factory, "rtml_kind", REGRESSOR)
    if kind not in (REGRESSOR, CLASSIFIER):
        raise ConfigError(f"{model}: rtml_kind must be 'regressor' or 'classifier', not {kind!r}")
    doc = (factory.__doc__ or "").strip().splitlines()
    return ModelSpec(model, doc[0] if doc else "user factory", kind, factory)


def parse_params(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are Python literals (3, 0.5, True, 'x', None) or plain text."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--param {item!r} is not key=value (e.g. --param l2=0.01)")
        try:
            value = ast.literal_eval(text)  # literals only: never code
        except (ValueError, SyntaxError):
            value = text
        params[key.strip()] = value
    return params
