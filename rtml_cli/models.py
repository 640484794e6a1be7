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
            model = self.factory(**merged)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {self.name!r} does not take these parameters ({exc}); see `rtml models`") from None
        if not (hasattr(model, "learn_one") and hasattr(model, "predict_one")):
            raise ConfigError(f"{self.name} returned a {type(model).__name__}, not a River model with learn_one and predict_one")
        return model


def _scaled(module: str, estimator: str) -> Callable[..., Any]:
    """A factory of `StandardScaler() | river.<module>.<estimator>(**params)`."""

    def factory(**params: Any) -> Any:
        from river import preprocessing

        cls = getattr(importlib.import_module(f"river.{module}"), estimator)
        return preprocessing.StandardScaler() | cls(**params)

    factory.__name__ = estimator
    return factory


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("linear", "StandardScaler | LinearRegression (River defaults): the baseline online regressor", REGRESSOR, _scaled("linear_model", "LinearRegression")),
        ModelSpec("pa", "StandardScaler | PARegressor: passive-aggressive regression", REGRESSOR, _scaled("linear_model", "PARegressor")),
        ModelSpec("bayes", "StandardScaler | BayesianLinearRegression, with a forgetting factor for drift", REGRESSOR, _scaled("linear_model", "BayesianLinearRegression"),
                  {"smoothing": 0.999}),
        ModelSpec("hat", "StandardScaler | HoeffdingAdaptiveTreeRegressor: a tree that replaces drifting branches", REGRESSOR,
                  _scaled("tree", "HoeffdingAdaptiveTreeRegressor"), {"seed": 42}),
        ModelSpec("arf", "StandardScaler | ARFRegressor: adaptive random forest (big; checkpoints in a forked child)",
                  REGRESSOR, _scaled("forest", "ARFRegressor"), {"n_models": 10, "seed": 42}),
        ModelSpec("knn", "StandardScaler | KNNRegressor over a sliding window of recent examples", REGRESSOR, _scaled("neighbors", "KNNRegressor")),
        ModelSpec("logistic", "StandardScaler | LogisticRegression: classifier for --target sign", CLASSIFIER, _scaled("linear_model", "LogisticRegression")),
        ModelSpec("hat-clf", "StandardScaler | HoeffdingAdaptiveTreeClassifier, for --target sign", CLASSIFIER, _scaled("tree", "HoeffdingAdaptiveTreeClassifier"),
                  {"seed": 42}),
        ModelSpec("arf-clf", "StandardScaler | ARFClassifier: adaptive random forest, for --target sign", CLASSIFIER,
                  _scaled("forest", "ARFClassifier"), {"n_models": 10, "seed": 42}),
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
