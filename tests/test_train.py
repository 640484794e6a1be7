"""rtml train, the model specs, the learner and the checkpoint store."""

from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import signal
import textwrap
import time
from pathlib import Path
from threading import Event

import pytest

from rtml_cli.checkpoint import Checkpointer, CheckpointError, CheckpointStore
from rtml_cli.errors import ConfigError
from rtml_cli.learner import Learner
from rtml_cli.log import ParquetLog
from rtml_cli.models import CLASSIFIER, SPECS, parse_params, resolve
from tests.conftest import assert_clean_error, rtml_process


def stream(n: int = 400, seed: int = 0, flip_at: int | None = None):
    import random

    rng = random.Random(seed)
    for i in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1), "c": rng.random()}
        sign = -1 if flip_at is not None and i >= flip_at else 1
        y = sign * (0.5 * x["a"] - 0.2 * x["b"]) + rng.gauss(0, 0.1)
        yield x, y


def as_label(spec, y):
    return int(y > 0) * 2 - 1 if spec.kind == CLASSIFIER else y


# -- the contract every spec keeps ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_round_trips_through_pickle_leaves_inputs_alone_and_repeats_when_seeded(name):
    spec = SPECS[name]
    model = spec.build()
    learner = Learner(model, spec.kind, spec.build)
    fresh = pickle.loads(pickle.dumps(model))  # before learning
    assert type(fresh) is type(model)
    preds = []
    for x, y in stream(300):
        before = copy.deepcopy(x)
        preds.append(learner.step(x, as_label(spec, y)))
        assert x == before, "the model mutated its input"
    restored = pickle.loads(pickle.dumps(learner.model))  # after learning
    probe = list(stream(20, seed=9))
    again = Learner(restored, spec.kind, spec.build)
    assert [again.predict(x) for x, _ in probe] == [learner.predict(x) for x, _ in probe]
    # a second model from the same spec, fed the same stream, predicts the same
    twin = Learner(spec.build(), spec.kind, spec.build)
    assert [twin.step(x, as_label(spec, y)) for x, y in stream(300)] == preds
    assert any(p != 0 for p in preds)


def test_sgd_is_exactly_rivers_linear_regression_on_a_standardised_target():
    from river import linear_model, optim, preprocessing

    ours = Learner(SPECS["sgd"].build(), "regressor", SPECS["sgd"].build)
    theirs = preprocessing.TargetStandardScaler(
        regressor=preprocessing.StandardScaler()
        | linear_model.LinearRegression(optimizer=optim.SGD(0.001), intercept_lr=0.001)
    )
    for x, y in stream(500):
        expected = theirs.predict_one(x)
        assert ours.step(x, y) == expected
        theirs.learn_one(x, y)


def test_params_are_literals_never_code_and_reach_the_model():
    assert parse_params(["l2=0.01", "seed=3", "flag=True", "name=abc"]) == {
        "l2": 0.01,
        "seed": 3,
        "flag": True,
        "name": "abc",
    }
    assert parse_params(["x=__import__('os').system('echo pwned')"]) == {"x": "__import__('os').system('echo pwned')"}
    assert SPECS["sgd"].build({"l2": 0.5}).regressor["LinearRegression"].l2 == 0.5
    assert SPECS["linear"].build({"ridge": 2.0}).ridge == 2.0


def test_a_users_factory_is_imported_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent('''
        def tiny(lr=0.1):
            """A linear model with my learning rate."""
            from river import linear_model, optim
            return linear_model.LinearRegression(optimizer=optim.SGD(lr))
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = resolve("my_models:tiny")
    assert spec.description == "A linear model with my learning rate." and spec.kind == "regressor"
    assert spec.build({"lr": 0.2}).optimizer.learning_rate == 0.2


@pytest.mark.parametrize(
    "model, fragment",
    [
        ("lineer", "unknown model 'lineer'"),
        ("no_such_module:f", "cannot import"),
        ("json:nope", "has no callable"),
    ],
)
def test_bad_model_names_are_clear_errors(model, fragment):
    from rtml_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        resolve(model)


def test_adwin_finds_the_flip_and_reset_replaces_the_model():
    spec = SPECS["sgd"]
    for on_drift in ("ignore", "reset"):
        learner = Learner(spec.build(), spec.kind, spec.build, on_drift=on_drift)
        first = learner.model
        for x, y in stream(4000, flip_at=2000):
            learner.step(x, y)
        assert learner.drifts >= 1
        assert (learner.model is first) == (on_drift == "ignore")


# -- the checkpoint store -------------------------------------------------------------------------


def payload(n: int = 50):
    spec = SPECS["linear"]
    learner = Learner(spec.build(), spec.kind, spec.build)
    for x, y in stream(n):
        learner.step(x, y)
    return {"model": learner.model, "detector": learner.detector, "metrics": learner.metrics}


def manifest():
    from rtml_cli.checkpoint import runtime_versions

    return {"name": "m", "spec": {}, "versions": runtime_versions(), "examples_learned": 50, "offsets": {"X": 49}}


def test_checkpoints_verify_load_and_are_pruned_to_keep(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    cp = Checkpointer(store, keep=3)
    for _ in range(5):
        assert cp.snapshot(payload(), manifest()) is not None
        cp.wait()
    cp.close()
    assert cp.written == [1, 2, 3, 4, 5] and cp.failures == []
    assert [c.version for c in store.list()] == [3, 4, 5]
    latest, loaded, problems = store.latest_valid()
    assert latest.version == 5 and problems == [] and set(loaded) == {"model", "detector", "metrics"}
    m = latest.manifest
    assert m["pickle"]["size"] == latest.pickle_path.stat().st_size and len(m["pickle"]["sha256"]) == 64
    assert m["write_seconds"] >= 0 and m["versions"]["river"]


def test_a_tampered_pickle_is_refused_and_the_previous_one_serves(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    cp = Checkpointer(store)
    cp.snapshot(payload(), manifest())
    cp.wait()
    cp.snapshot(payload(80), manifest())
    cp.close()
    newest = store.list()[-1]
    evil = pickle.dumps({"model": "os.system would run here"})
    newest.pickle_path.write_bytes(evil)  # a valid-looking manifest, another pickle
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        newest.load()
    latest, _, problems = store.latest_valid()
    assert latest.version == 1 and "sha256" in problems[0]


def test_with_a_key_unsigned_or_wrongly_signed_checkpoints_are_refused(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    unsigned = Checkpointer(store)
    unsigned.snapshot(payload(), manifest())
    unsigned.close()
    with pytest.raises(CheckpointError, match="not signed"):
        store.list()[-1].load(b"secret")
    signed = Checkpointer(store, key=b"secret")
    signed.snapshot(payload(), manifest())
    signed.close()
    assert store.list()[-1].load(b"secret")["model"] is not None
    with pytest.raises(CheckpointError, match="wrong signature"):
        store.list()[-1].load(b"other key")


def test_a_checkpoint_from_another_river_version_says_so(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    m = manifest()
    m["versions"] = {**m["versions"], "river": "0.19.0"}
    cp = Checkpointer(store)
    cp.snapshot(payload(), m)
    cp.close()
    with pytest.raises(CheckpointError, match=r"written by river 0\.19\.0.*install river==0\.19\.0"):
        store.list()[-1].load()


def test_big_models_are_snapshotted_by_a_forked_child(tmp_path):
    store = CheckpointStore(tmp_path, "m")
    cp = Checkpointer(store, inline_limit=0.0)  # every pickle counts as slow
    cp.snapshot(payload(), manifest())
    assert cp.use_fork
    cp.wait()
    assert cp.snapshot(payload(120), manifest()) == 2
    cp.close()
    assert cp.written == [1, 2] and len(cp.stalls_ms) == 2
    assert store.list()[-1].load()["model"] is not None


# -- rtml train -----------------------------------------------------------------------------------


def n_examples(data_dir: Path) -> dict[str, int]:
    log = ParquetLog(data_dir, "examples")
    return {s: log.last_offset(s) for s in log.partitions()}


def train(rtml, *args) -> dict:
    r = rtml("train", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow
def test_train_learns_every_example_once_and_resumes_where_it_stopped(rtml, examples_dir):
    first = train(rtml, "--checkpoint-every", "100")
    total = sum(v + 1 for v in n_examples(examples_dir).values())
    assert first["learned_this_run"] == first["examples_learned"] == total > 250
    assert first["offsets"] == n_examples(examples_dir)
    m = CheckpointStore(examples_dir, "linear").list()[-1].manifest
    assert m["examples_learned"] == total and m["offsets"] == first["offsets"]
    assert set(m) >= {
        "version",
        "created_at",
        "spec",
        "versions",
        "pickle",
        "trained_until",
        "metrics",
        "drift_count",
        "write_seconds",
    }
    assert m["spec"] == {
        "model": "linear",
        "kind": "regressor",
        "params": {"memory": 500.0, "ridge": 4.0, "clip": 5.0, "scale_memory": 5000.0},
    }
    again = train(rtml)
    assert again["learned_this_run"] == 0 and again["resumed_from"] == first["version"]
    assert rtml("ingest", "--max-ticks", "30000").exit_code == 0
    assert rtml("features").exit_code == 0
    more = train(rtml)
    new_total = sum(v + 1 for v in n_examples(examples_dir).values())
    assert more["learned_this_run"] == new_total - total and more["examples_learned"] == new_total


@pytest.mark.slow
def test_the_same_examples_give_the_same_model_however_training_is_cut(rtml, examples_dir, tmp_path):
    from rtml_cli.checkpoint import CheckpointStore

    train(rtml, "--name", "whole")
    # train in pieces: a checkpoint after every 37 examples, resumed each time by a new run
    for _ in range(3):
        train(rtml, "--name", "pieces", "--checkpoint-every", "37")
    a = CheckpointStore(examples_dir, "whole").latest_valid()[1]["model"]
    b = CheckpointStore(examples_dir, "pieces").latest_valid()[1]["model"]
    probe = [{"r_1": 0.001 * i, "ofi": 0.1, "rv_5": 0.002} for i in range(5)]
    assert [a.predict_one(x) for x in probe] == [b.predict_one(x) for x in probe]


@pytest.mark.slow
def test_a_second_trainer_on_the_same_name_is_refused(rtml, examples_dir):
    with CheckpointStore(examples_dir, "linear").lock():
        assert_clean_error(rtml("train"), "another `rtml train`", f"pid {os.getpid()}")


@pytest.mark.slow
def test_changed_model_params_need_another_name(rtml, examples_dir):
    train(rtml)
    assert_clean_error(rtml("train", "--param", "ridge=1.0"), "use --name")
    assert train(rtml, "--param", "ridge=1.0", "--name", "linear-r1")["name"] == "linear-r1"


@pytest.mark.slow
def test_a_tampered_checkpoint_is_skipped_and_training_resumes_from_the_last_good_one(rtml, examples_dir):
    train(rtml, "--checkpoint-every", "200", "--keep", "50")
    store = CheckpointStore(examples_dir, "linear")
    cps = store.list()
    cps[-1].pickle_path.write_bytes(cps[-1].pickle_path.read_bytes()[:-1] + b"X")
    listing = json.loads(rtml("checkpoints", "--json").stdout)
    assert "does not match the sha256" in listing[-1]["status"] and listing[0]["status"] == "ok"
    again = train(rtml)
    assert again["resumed_from"] == cps[-2].version
    assert "does not match the sha256" in again["skipped_checkpoints"][0]
    assert again["learned_this_run"] == cps[-1].manifest["examples_learned"] - cps[-2].manifest["examples_learned"]


@pytest.mark.slow
def test_with_a_key_set_an_unsigned_checkpoint_is_not_trusted(rtml, examples_dir, monkeypatch):
    train(rtml)
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "k3y")
    assert_clean_error(rtml("train"), "none of the 1 checkpoints", "is not signed", "--fresh")
    again = train(rtml, "--fresh")
    assert again["resumed_from"] is None and "not signed" in again["skipped_checkpoints"][0]
    listing = json.loads(rtml("checkpoints", "--json").stdout)
    assert listing[-1]["status"] == "ok" and len(listing) == 2  # the new one is signed; the old one kept


@pytest.mark.slow
def test_a_mistyped_key_never_loses_the_model(rtml, examples_dir, monkeypatch):
    """Checkpoints signed with one key, then train with a typo: it refuses to start afresh
    (it used to, and retention then deleted every good checkpoint); --fresh starts a new model
    deliberately and keeps the old ones, which the right key still finds."""
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "right")
    train(rtml, "--checkpoint-every", "150")
    store = CheckpointStore(examples_dir, "linear")
    signed = [cp.version for cp in store.list()]
    assert len(signed) >= 3
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "typo")
    assert_clean_error(
        rtml("train", "--keep", "2"), f"none of the {len(signed)} checkpoints", "wrong signature", "--fresh"
    )
    assert [cp.version for cp in store.list()] == signed
    fresh = train(rtml, "--fresh", "--keep", "2", "--checkpoint-every", "150")
    assert fresh["resumed_from"] is None and fresh["learned_this_run"] == fresh["examples_learned"]
    versions = [cp.version for cp in store.list()]
    assert versions[: len(signed)] == signed and len(versions) == len(signed) + 2  # retention spared the old model
    assert_clean_error(rtml("train", "--fresh"), "loads", "--name")  # nothing to start afresh from now
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "right")
    cp, _, problems = store.latest_valid(b"right")
    assert cp.version == signed[-1] and len(problems) == 2


@pytest.mark.slow
def test_checkpoints_of_another_river_version_are_kept_and_named(rtml, examples_dir):
    train(rtml, "--checkpoint-every", "150")
    store = CheckpointStore(examples_dir, "linear")
    old = store.list()
    for cp in old:  # as if written by another River: its pickles may not load here
        m = json.loads(cp.manifest_path.read_text())
        m["versions"]["river"] = "0.0.1"
        cp.manifest_path.write_text(json.dumps(m))
    assert_clean_error(rtml("train"), "written by river 0.0.1", "install river==0.0.1", "--fresh")
    train(rtml, "--fresh", "--keep", "1")
    assert [cp.version for cp in store.list()][: len(old)] == [cp.version for cp in old]


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train"], ["predict"], ["checkpoints"]])
def test_an_empty_key_is_an_error(rtml, examples_dir, monkeypatch, command):
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "")
    assert_clean_error(rtml(*command), "RTML_CHECKPOINT_KEY is set but empty")


@pytest.mark.slow
def test_a_classifier_needs_sign_targets(rtml, examples_dir):
    assert_clean_error(rtml("train", "--model", "logistic"), "is a classifier", "--target sign")
    assert rtml("features", "--target", "sign", "--rebuild").exit_code == 0
    s = train(rtml, "--model", "logistic")
    assert s["examples_learned"] > 250 and 0 <= s["metrics"]["hit_rate"] <= 1
    assert_clean_error(rtml("train", "--model", "linear"), "is a regressor")


def test_models_lists_every_spec_with_its_defaults_and_the_parameters_it_accepts(rtml):
    r = rtml("models", "--json", data=False)
    listed = json.loads(r.stdout)
    assert [m["name"] for m in listed] == list(SPECS)
    for m in listed:
        assert set(m["defaults"]) <= set(m["accepts"]), m
        with pytest.raises(ConfigError, match="does not take these parameters"):
            SPECS[m["name"]].build({"no_such_parameter": 1})
    # a parameter listed beyond the defaults reaches the estimator
    assert {"lr", "l2", "l1"} <= set(next(m for m in listed if m["name"] == "sgd")["accepts"])
    assert SPECS["sgd"].build({"l1": 0.25}).regressor["LinearRegression"].l1 == 0.25
    assert "n_models" in next(m for m in listed if m["name"] == "arf")["accepts"]
    text = rtml("models", data=False).output
    assert "defaults: memory=500.0, ridge=4.0" in text and "--param:  lr, l2" in text


def test_train_without_examples_says_what_to_run(rtml):
    assert_clean_error(rtml("train"), "no examples log", "rtml features")


@pytest.mark.slow
def test_kill_9_of_train_follow_while_examples_arrive_loses_nothing_and_repeats_nothing(rtml, examples_dir):
    d = str(examples_dir)
    ingest = rtml_process(
        ["ingest", "--speed", "2000", "--duration", "8", "--flush-interval", "0.2", "--json", "--data-dir", d]
    )
    feats = rtml_process(["features", "--follow", "--poll", "0.1", "--json", "--data-dir", d])
    try:
        store = CheckpointStore(examples_dir, "linear")
        for round_ in range(3):
            p = rtml_process(
                ["train", "--follow", "--checkpoint-every", "25", "--poll", "0.05", "--json", "--data-dir", d]
            )
            deadline = time.monotonic() + 30
            while len(store.list()) <= round_ and time.monotonic() < deadline:
                time.sleep(0.05)  # until this run has committed a checkpoint of its own
            time.sleep(0.3)
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        assert ingest.wait(120) == 0
        time.sleep(1.0)
        feats.send_signal(signal.SIGTERM)
        assert feats.wait(60) == 0
    finally:
        ingest.kill()
        feats.kill()
    final = train(rtml)
    counts = n_examples(examples_dir)
    assert final["offsets"] == counts
    assert final["examples_learned"] == sum(v + 1 for v in counts.values())
    versions = [c.version for c in CheckpointStore(examples_dir, "linear").list()]
    assert versions == sorted(set(versions)) and len(versions) >= 4


@pytest.mark.slow
def test_a_long_backlog_read_in_small_chunks_is_learned_in_the_same_order(rtml, examples_dir):
    from threading import Event

    from rtml_cli.train import Trainer, TrainOptions

    seen = {}
    for name, chunk in (("one", 10**9), ("chunks", 7)):
        with Trainer(examples_dir, TrainOptions(name=name)) as t:
            order = []
            original = t.learner.step
            t.learner.step = lambda x, y, original=original, order=order: order.append(y) or original(x, y)
            t.step(chunk=chunk)
            t.run(Event(), follow=False)
            seen[name] = order
    assert len(seen["one"]) == sum(v + 1 for v in n_examples(examples_dir).values())
    assert seen["chunks"] == seen["one"]


def test_with_a_key_a_changed_manifest_or_a_renamed_checkpoint_is_refused(tmp_path):
    import json as _json

    store = CheckpointStore(tmp_path, "m")
    cp = Checkpointer(store, key=b"secret")
    cp.snapshot(payload(), manifest())
    cp.wait()
    cp.snapshot(payload(60), manifest())
    cp.close()
    first, second = store.list()
    assert second.load(b"secret")["model"] is not None
    m = _json.loads(second.manifest_path.read_text())
    m["offsets"] = {"X": 10**6}  # claim more was learned than was
    second.manifest_path.write_text(_json.dumps(m))
    with pytest.raises(CheckpointError, match="wrong signature"):
        store.list()[-1].load(b"secret")
    # an older signed pair under a newer version number
    second.pickle_path.write_bytes(first.pickle_path.read_bytes())
    second.manifest_path.write_text(first.manifest_path.read_text())
    with pytest.raises(CheckpointError, match="says it is version 1"):
        store.list()[-1].load(b"secret")


@pytest.mark.slow
def test_training_refuses_checkpoints_of_examples_that_were_rebuilt(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "60000").exit_code == 0
    assert rtml("features").exit_code == 0
    assert rtml("train").exit_code == 0
    assert rtml("features", "--rebuild", "--horizon", "3").exit_code == 0
    assert_clean_error(rtml("train"), "were rebuilt", "--name")
    r = rtml("train", "--name", "fresh", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["examples_learned"] == sum(
        ParquetLog(data_dir, "examples").last_offset(s) + 1 for s in ParquetLog(data_dir, "examples").partitions()
    )


@pytest.mark.slow
def test_a_dead_checkpoint_writer_is_replaced_and_training_ends(examples_dir):
    import os
    import signal

    from rtml_cli.train import Trainer, TrainOptions

    with Trainer(examples_dir, TrainOptions(checkpoint_every=20)) as t:
        writer = t.checkpointer._writer
        os.kill(writer.pid, signal.SIGKILL)
        t.run(Event(), follow=False)  # must not hang
        summary = t.summary()
    from rtml_cli.checkpoint import CheckpointStore

    newest = CheckpointStore(examples_dir, "linear").list()[-1]
    assert newest.manifest["examples_learned"] == summary["examples_learned"]
    assert any("writer" in f for f in summary["checkpoint_failures"])  # the death was noticed and reported


def test_a_message_cut_short_is_never_written_as_a_checkpoint(tmp_path):
    import os
    import struct

    from rtml_cli.checkpoint import CheckpointStore, _serve

    store = CheckpointStore(tmp_path, "m")
    store.dir.mkdir(parents=True)
    req_r, req_w = os.pipe()
    ack_r, ack_w = os.pipe()
    header = json.dumps({"version": 7, "manifest": {}}).encode()
    os.write(req_w, struct.pack(">QQ", len(header), 1_000_000) + header + b"x" * 1000)
    os.close(req_w)
    _serve(req_r, ack_w, store, keep=3, key=None)
    os.close(ack_w)
    assert os.read(ack_r, 1000) == b""  # nothing acknowledged
    assert not list(store.dir.glob("*.pkl")) and not list(store.dir.glob("*.json"))


@pytest.mark.slow
def test_a_failed_final_checkpoint_is_an_error_not_a_success(examples_dir, monkeypatch):
    import rtml_cli.checkpoint as checkpoint_module

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", disk_full)
    from rtml_cli.errors import RtmlError
    from rtml_cli.train import Trainer, TrainOptions

    with (
        pytest.raises(RtmlError, match=r"are in no checkpoint.*No space left"),
        Trainer(examples_dir, TrainOptions()) as t,
    ):
        t.run(Event(), follow=False)


@pytest.mark.slow
def test_ctrl_c_while_catching_up_stops_soon_and_keeps_what_was_learned(examples_dir):
    from rtml_cli.train import Trainer, TrainOptions

    stop = Event()
    with Trainer(examples_dir, TrainOptions()) as t:
        t.learner.step = (lambda original: lambda x, y: (stop.set(), original(x, y))[1])(t.learner.step)
        t.run(stop, follow=False)
        learned = t.learner.learned
    assert 0 < learned <= 256  # stopped at the first check, not at the end of the backlog
    from rtml_cli.checkpoint import CheckpointStore

    assert CheckpointStore(examples_dir, "linear").list()[-1].manifest["examples_learned"] == learned


@pytest.mark.slow
@pytest.mark.parametrize("manifest", [{}, [], {"pickle": "x"}, {"pickle": {"size": "1", "sha256": 3}}])
def test_manifests_of_the_wrong_shape_are_skipped_not_crashed_on(rtml, examples_dir, manifest):
    assert rtml("train").exit_code == 0
    (examples_dir / "checkpoints" / "linear" / "0000000099.json").write_text(json.dumps(manifest))
    r = rtml("train", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["resumed_from"] == 1
    listing = rtml("checkpoints", "--json")
    assert listing.exit_code == 0, listing.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "sgd", "--param", "l2=abc"], "check the --param values"),
        (["--param", "ridge=-1"], "does not take these parameters"),
        (["--model", "knn", "--param", "n_neighbors=0"], "check the --param values"),
        (["--model", "os:getcwd"], "not a River model"),
    ],
)
def test_bad_model_parameters_are_errors_not_tracebacks(rtml, examples_dir, args, fragment):
    assert_clean_error(rtml("train", "--name", "bad", *args), fragment)


@pytest.mark.slow
def test_tuple_parameters_resume(rtml, examples_dir):
    args = ("train", "--model", "hat", "--param", "nominal_attributes=('zz',)", "--name", "tup", "--json")
    assert rtml(*args).exit_code == 0
    again = rtml(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["resumed_from"] is not None


@pytest.mark.slow
def test_a_hidden_directory_does_not_break_the_listing(rtml, examples_dir):
    assert rtml("train").exit_code == 0
    (examples_dir / "checkpoints" / ".trash").mkdir()
    assert rtml("checkpoints").exit_code == 0


def test_a_mistyped_data_dir_leaves_nothing_behind_and_checkpoints_says_what_is_there(rtml, tmp_path):
    typo = tmp_path / "typo"
    assert_clean_error(rtml("train", "--data-dir", str(typo), data=False), "no examples log")
    assert not typo.exists()
    assert_clean_error(rtml("checkpoints", "--data-dir", str(typo), data=False), "no data directory")
    typo.mkdir()
    r = rtml("checkpoints", "--data-dir", str(typo), data=False)
    assert r.exit_code == 0 and "no checkpoints" in r.output and "rtml train" in r.output
