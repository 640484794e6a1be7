"""Models that cannot blow up unnoticed: the learner's watch, train's report, predict's refusal,
the backtest's marker; and a classifier's expected sign."""

from __future__ import annotations

import json
import math
import random

import pytest

from rtml_cli.checkpoint import CheckpointStore
from rtml_cli.learner import DIVERGENCE_FACTOR, Learner, predict_value
from rtml_cli.models import CLASSIFIER, SPECS


class Scripted:
    """Predicts what it is told, learns nothing."""

    def __init__(self, outputs):
        self.outputs = iter(outputs)

    def predict_one(self, x):
        return next(self.outputs)

    def learn_one(self, x, y):
        pass


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.01 * (DIVERGENCE_FACTOR + 5)])
def test_a_prediction_that_is_not_a_number_or_far_off_scale_marks_the_model(bad):
    ys = [0.01 * (-1) ** i for i in range(60)]  # targets of mean size 0.01
    outputs = [0.005] * 40 + [bad] + [0.005] * 19
    learner = Learner(Scripted(outputs), "regressor", lambda: None)
    for y in ys:
        learner.step({"a": 1.0}, y)
    assert learner.diverged is not None and learner.diverged["at_example"] == 41
    assert ("not a number" in learner.diverged["why"]) == (not math.isfinite(bad))
    # kept in the checkpoint's health and restored from it
    again = Learner(Scripted([]), "regressor", lambda: None, health=json.loads(json.dumps(learner.health())))
    assert again.diverged == json.loads(json.dumps(learner.diverged))


def test_predictions_inside_the_scale_and_early_ones_do_not_mark_it():
    # 30x the mean target: a bold model, not a broken one; before 20 targets there is no scale yet
    learner = Learner(Scripted([50.0] * 5 + [0.3] * 100), "regressor", lambda: None)
    for i in range(105):
        learner.step({"a": 1.0}, 0.01 * (-1) ** i)
    assert learner.diverged is None


def as_label(y: float) -> int:
    return 1 if y > 0 else -1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if s.kind == CLASSIFIER))
def test_a_classifiers_value_is_its_expected_sign(name):
    spec = SPECS[name]
    learner = Learner(spec.build(), spec.kind, spec.build)
    rng = random.Random(5)
    for _ in range(400):  # mostly down moves, down more often when a < 0
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        y = -1 if (x["a"] < 0.5 or rng.random() < 0.3) else 1
        learner.step(x, y)
    probe = {"a": -1.5, "b": 0.0}
    proba = learner.model.predict_proba_one(probe)
    up = sum(p for c, p in proba.items() if c is True or (not isinstance(c, bool) and c > 0))
    down = sum(p for c, p in proba.items() if c is False or (not isinstance(c, bool) and c < 0))
    assert predict_value(learner.model, CLASSIFIER, probe) == pytest.approx(up - down, abs=1e-12)
    assert predict_value(learner.model, CLASSIFIER, probe) < 0  # it expects a fall, and says so


def test_logistic_expected_sign_by_hand():
    """2 * sigmoid(w . z + b) - 1, with z the standardised inputs, from the model's own weights."""
    spec = SPECS["logistic"]
    learner = Learner(spec.build(), spec.kind, spec.build)
    rng = random.Random(2)
    for _ in range(300):
        x = {"a": rng.gauss(1, 2), "b": rng.gauss(0, 1)}
        learner.step(x, 1 if x["a"] + rng.gauss(0, 1) > 1 else -1)
    scaler, logreg = learner.model.steps.values()
    probe = {"a": -2.0, "b": 0.5}
    z = {k: (v - scaler.means[k]) / math.sqrt(scaler.vars[k]) for k, v in probe.items()}
    score = sum(logreg.weights[k] * z[k] for k in z) + logreg.intercept
    by_hand = 2 / (1 + math.exp(-score)) - 1
    assert predict_value(learner.model, CLASSIFIER, probe) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand < -0.3  # a clear "down", which the old sum of class x probability could never say


# -- through the stages ---------------------------------------------------------------------------


@pytest.fixture
def blown(rtml, data_dir, user_models):
    """A data directory whose model blew up at example 121, checkpointed every 40 examples, keeping 1."""
    assert rtml("ingest", "--max-ticks", "60000", "--json").exit_code == 0
    assert rtml("features", "--json").exit_code == 0
    r = rtml(
        "train", "--model", "bt_models:blowup", "--name", "blowup", "--checkpoint-every", "40", "--keep", "1", "--json"
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow
def test_train_reports_divergence_and_marks_the_checkpoints(blown, data_dir):
    assert blown["diverged"]["at_example"] == 121
    assert "1e+12" in blown["diverged"]["why"]
    cps = CheckpointStore(data_dir, "blowup").list()
    marks = {cp.version: cp.manifest["diverged"] for cp in cps}
    assert marks[cps[-1].version] is True
    # pruned to --keep 1, but the newest healthy one is kept for predict (which of the due
    # checkpoints were written depends on the writer's pace: each one skipped while it was busy)
    healthy = [cp for cp in cps if not cp.manifest["diverged"]]
    assert len(cps) == 2 and len(healthy) == 1
    assert 40 <= healthy[0].manifest["examples_learned"] <= 120


@pytest.mark.slow
def test_predict_serves_the_last_healthy_model_and_says_why(rtml, blown, data_dir):
    r = rtml("predict", "--name", "blowup", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["models"]["blowup"]
    healthy = next(cp for cp in CheckpointStore(data_dir, "blowup").list() if not cp.manifest["diverged"])
    assert s["version"] == healthy.version
    assert any("diverged at example 121" in why for why in s["skipped_checkpoints"])


@pytest.mark.slow
def test_the_terminal_says_it_diverged(rtml, data_dir, user_models):
    assert rtml("ingest", "--max-ticks", "60000", "--json").exit_code == 0
    assert rtml("features", "--json").exit_code == 0
    r = rtml("train", "--model", "bt_models:blowup", "--name", "b2")
    assert r.exit_code == 0
    assert "diverged at example 121" in r.output and "last healthy" in r.output
    listed = json.loads(rtml("checkpoints", "--json").stdout)
    assert [c["diverged"] for c in listed] == [True]
    assert "diverged" in rtml("checkpoints").output


@pytest.mark.slow
def test_the_backtest_marks_a_diverged_row(rtml, blown):
    r = rtml("backtest", "--model", "bt_models:blowup", "--warmup", "20", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    live = next(x for x in s["results"] if x["model"] == "bt_models:blowup" and x["refresh"] == "1")
    assert live["diverged_at_row"] is not None
    assert any("diverged at row" in w for w in s["warnings"])
    frozen = next(x for x in s["results"] if x["model"] == "bt_models:blowup" and x["refresh"] == "never")
    assert frozen["diverged_at_row"] is None  # frozen after 20 examples: it never blew up


def test_a_diverging_prediction_counts_as_a_miss_and_json_stays_valid():
    from rtml_cli.learner import RollingMetrics

    m = RollingMetrics(10)
    m.update(-1.0, float("nan"))
    m.update(1.0, 2.0)
    d = m.as_dict()
    assert d["hit_rate"] == 0.5 and d["mae"] is None
    json.dumps(d, allow_nan=False)
