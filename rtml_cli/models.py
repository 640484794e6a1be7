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

    def accepts(self) -> list[str]:
        """The parameters `--param` may set: the factory's own, then those it hands to the
        estimator it builds."""
        import inspect

        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        own = [p.name for p in inspect.signature(self.factory).parameters.values() if p.kind in kinds]
        passes = _PASSES_TO.get(self.factory)
        if passes is None:
            return own
        module, estimator, taken = passes
        cls = getattr(importlib.import_module(module), estimator)
        inner = [p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds]
        return own + [p for p in inner if p not in own and p not in taken]

    def build(self, params: dict[str, Any] | None = None) -> Any:
        merged = {**self.defaults, **(params or {})}
        try:
            model = self.factory(**merged)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"model {self.name!r} does not take these parameters ({exc}); see `rtml models`"
            ) from None
        if not (hasattr(model, "learn_one") and hasattr(model, "predict_one")):
            raise ConfigError(
                f"{self.name} returned a {type(model).__name__}, not a River model with learn_one and predict_one"
            )
        return model


# factory -> (module, estimator class, parameters the factory sets itself): where its
# **params go, for `ModelSpec.accepts`
_PASSES_TO: dict[Callable[..., Any], tuple[str, str, set[str]]] = {}


def _scaled(module: str, estimator: str, target_scaled: bool) -> Callable[..., Any]:
    """A factory of `StandardScaler() | <module>.<estimator>(**params)`; for a regressor
    wrapped in `TargetStandardScaler`, which learns on a standardised target and scales its
    predictions back: step sizes, penalties and leaf models then mean the same whether the
    target is a return of 1e-4 or a price of 1e5."""

    def factory(**params: Any) -> Any:
        from river import preprocessing

        cls = getattr(importlib.import_module(module), estimator)
        model = preprocessing.StandardScaler() | cls(**params)
        return preprocessing.TargetStandardScaler(regressor=model) if target_scaled else model

    factory.__name__ = estimator
    _PASSES_TO[factory] = (module, estimator, set())
    return factory


def _sgd(lr: float = 0.001, l2: float = 0.0, **params: Any) -> Any:
    """River's LinearRegression with plain SGD at step size `lr` (River's default 0.01
    diverges on fat-tailed market features even on a standardised target)."""
    from river import linear_model, optim, preprocessing

    model = preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.SGD(lr), intercept_lr=lr, l2=l2, **params
    )
    return preprocessing.TargetStandardScaler(regressor=model)  # type: ignore[arg-type]  # a regressor pipeline


def _ridge(**params: Any) -> Any:
    """`rtml_cli.ridge.ForgettingRidge`: it standardises its own inputs and target (with
    forgetting, so a bad print fades), so it needs neither scaler."""
    from rtml_cli.ridge import ForgettingRidge

    return ForgettingRidge(**params)


_PASSES_TO[_sgd] = ("river.linear_model", "LinearRegression", {"optimizer", "intercept_lr", "l2"})
_PASSES_TO[_ridge] = ("rtml_cli.ridge", "ForgettingRidge", set())


def _regressor(name: str, description: str, module: str, estimator: str, **defaults: Any) -> ModelSpec:
    return ModelSpec(name, description, REGRESSOR, _scaled(module, estimator, True), defaults)


def _classifier(name: str, description: str, module: str, estimator: str, **defaults: Any) -> ModelSpec:
    return ModelSpec(name, description, CLASSIFIER, _scaled(module, estimator, False), defaults)


# Every regressor learns on a standardised target (see `_scaled`). `linear`, the default, is
# the one that beat both the zero baseline and its own frozen copy on the simulated market
# and never diverged on the data sets named in tests/test_models.py (docs/train.md: "Models").
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "linear",
            "ridge regression with exponential forgetting (the default): adapts to drift, shrinks "
            "toward no move, clips bad prints, cannot diverge (memory, ridge, clip, scale_memory)",
            REGRESSOR,
            _ridge,
            {"memory": 500.0, "ridge": 4.0, "clip": 5.0, "scale_memory": 5000.0},
        ),
        ModelSpec(
            "sgd",
            "StandardScaler | LinearRegression: River's stochastic gradient descent (lr, l2)",
            REGRESSOR,
            _sgd,
            {"lr": 0.001, "l2": 0.0},
        ),
        _regressor(
            "pa",
            "StandardScaler | PARegressor: passive-aggressive regression (C: how aggressive)",
            "river.linear_model",
            "PARegressor",
            C=0.001,
        ),
        _regressor(
            "bayes",
            "StandardScaler | BayesianLinearRegression, with a forgetting factor for drift",
            "river.linear_model",
            "BayesianLinearRegression",
            smoothing=0.999,
        ),
        _regressor(
            "hat",
            "StandardScaler | HoeffdingAdaptiveTreeRegressor: a tree that replaces drifting branches",
            "river.tree",
            "HoeffdingAdaptiveTreeRegressor",
            seed=42,
        ),
        _regressor(
            "arf",
            "StandardScaler | ARFRegressor: adaptive random forest (big; checkpoints in a forked child)",
            "river.forest",
            "ARFRegressor",
            n_models=10,
            seed=42,
        ),
        _regressor(
            "knn",
            "StandardScaler | KNNRegressor over a sliding window of recent examples",
            "river.neighbors",
            "KNNRegressor",
        ),
        _classifier(
            "logistic",
            "StandardScaler | LogisticRegression: classifier for --target sign",
            "river.linear_model",
            "LogisticRegression",
        ),
        _classifier(
            "hat-clf",
            "StandardScaler | HoeffdingAdaptiveTreeClassifier, for --target sign",
            "river.tree",
            "HoeffdingAdaptiveTreeClassifier",
            seed=42,
        ),
        _classifier(
            "arf-clf",
            "StandardScaler | ARFClassifier: adaptive random forest, for --target sign",
            "river.forest",
            "ARFClassifier",
            n_models=10,
            seed=42,
        ),
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
        raise ConfigError(
            f"unknown model {model!r}; choose one of {', '.join(SPECS)} (see `rtml models`), or give module:factory"
        )
    module_name, _, attr = model.partition(":")
    if not (all(part.isidentifier() for part in module_name.split(".")) and attr.isidentifier()):
        raise ConfigError(
            f"--model {model!r} is not module:factory: a module name as Python imports it "
            "(my_models, or pkg.models; no paths) and a function name"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for --model {model} ({exc}); is it on PYTHONPATH?") from None
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} for --model {model} failed: {type(exc).__name__}: {exc}"
        ) from None
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
