"""rtml predict: every feature row predicted once by each model, hot swaps, refused checkpoints."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rtml_cli.checkpoint import CheckpointStore, write_checkpoint
from rtml_cli.learner import NOT_FEATURES
from rtml_cli.log import ParquetLog
from tests.conftest import assert_clean_error, rtml_process

BAR_NS = 60 * 1_000_000_000  # `rtml features` default bar


def predict(rtml, *args) -> dict:
    r = rtml("predict", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def predictions(data_dir: Path) -> pl.DataFrame:
    return ParquetLog(data_dir, "predictions").read_all()


def features(data_dir: Path) -> pl.DataFrame:
    return ParquetLog(data_dir, "features").read_all()


def assert_each_row_once(data_dir: Path, model: str = "linear") -> pl.DataFrame:
    """Every feature row has exactly one prediction of `model`."""
    p = predictions(data_dir).filter(pl.col("model") == model)
    f = features(data_dir)
    got = sorted(zip(p["symbol"], p["features_offset"], strict=True))
    assert got == sorted(zip(f["symbol"], f["offset"], strict=True)), "a feature row was skipped or predicted twice"
    return p


def more_market(rtml, ticks: int = 20_000) -> None:
    assert rtml("ingest", "--max-ticks", str(ticks), "--json").exit_code == 0
    assert rtml("features", "--json").exit_code == 0


@pytest.mark.slow
def test_one_shot_predicts_every_row_with_the_newest_checkpoint(rtml, trained_dir):
    started = time.time_ns()
    s = predict(rtml)
    p = assert_each_row_once(trained_dir)
    cp = CheckpointStore(trained_dir, "linear").list()[-1]
    assert s["models"]["linear"]["version"] == cp.version and s["predicted_this_run"] == p.height
    assert p["model_version"].unique().to_list() == [cp.version]
    assert p["model_trained_until"].unique().to_list() == [
        pl.Series([cp.manifest["trained_until"]]).str.to_datetime(time_unit="ns").item()
    ]
    # the predictions are the checkpoint's model's, on each row's features (NaN/inf left out)
    model = pickle.loads(cp.pickle_path.read_bytes())["model"]
    f = features(trained_dir).join(
        p.select("symbol", pl.col("features_offset").alias("offset"), "prediction"), on=["symbol", "offset"]
    )
    for row in f.sample(50, seed=1).iter_rows(named=True):
        x = {
            k: v
            for k, v in row.items()
            if k not in NOT_FEATURES and k != "prediction" and v is not None and math.isfinite(v)
        }
        assert row["prediction"] == pytest.approx(model.predict_one(x), rel=1e-12, abs=1e-15)
    # latency: from the bar's end (ts + 1 minute) to when the prediction was written
    written = p["ts"].dt.epoch("ns") + BAR_NS + (p["latency_ms"] * 1e6).cast(pl.Int64)
    assert written.min() >= started - 1e6 and written.max() <= time.time_ns()
    for _, part in p.group_by("symbol"):  # the log's offsets follow the bars
        assert part.sort("features_offset")["offset"].to_list() == list(range(part.height))
    # nothing new: nothing predicted
    assert predict(rtml)["predicted_this_run"] == 0


@pytest.mark.slow
def test_a_restart_predicts_only_what_is_new(rtml, trained_dir):
    first = predict(rtml)["predicted_this_run"]
    more_market(rtml)
    second = predict(rtml)["predicted_this_run"]
    p = assert_each_row_once(trained_dir)
    assert first > 0 and second > 0 and p.height == first + second


@pytest.mark.slow
def test_the_offsets_survive_a_lost_state_file_and_a_crash_between_publish_and_save(rtml, trained_dir):
    predict(rtml)
    more_market(rtml)
    (trained_dir / "state" / "predict.json").unlink()  # the log itself is the record
    predict(rtml)
    state = json.loads((trained_dir / "state" / "predict.json").read_text())
    # a crash after publishing a part but before saving the state: the state lags the log
    state["log_offsets"] = dict.fromkeys(state["log_offsets"], 0)
    state["consumers"]["linear"] = dict.fromkeys(state["consumers"]["linear"], 0)
    (trained_dir / "state" / "predict.json").write_text(json.dumps(state))
    assert predict(rtml)["predicted_this_run"] == 0
    assert_each_row_once(trained_dir)


@pytest.mark.slow
def test_a_model_left_out_for_a_run_resumes_where_it_was(rtml, trained_dir):
    assert rtml("train", "--model", "pa", "--json").exit_code == 0
    first = predict(rtml, "--name", "linear", "--name", "pa")["models"]
    assert first["linear"]["predicted_this_run"] == first["pa"]["predicted_this_run"] > 0
    more_market(rtml)
    predict(rtml, "--name", "linear")  # pa is not trained_dir in this run
    again = predict(rtml, "--name", "pa")["models"]["pa"]
    assert again["predicted_this_run"] == features(trained_dir).height - first["pa"]["predicted_this_run"]
    for m in ("linear", "pa"):
        assert_each_row_once(trained_dir, m)


def test_a_state_file_ahead_of_the_log_is_not_trusted(rtml, trained_dir, tmp_path):
    predict(rtml)
    shutil.move(trained_dir / "predictions", tmp_path / "moved")  # the log goes; its bookmark stays
    assert predict(rtml)["predicted_this_run"] == features(trained_dir).height
    assert_each_row_once(trained_dir)


def test_without_a_checkpoint_one_shot_says_to_train(rtml, trained_dir):
    assert_clean_error(rtml("predict", "--name", "lienar"), "no checkpoints named 'lienar'", "the names there: linear")
    shutil.rmtree(trained_dir / "checkpoints")
    assert_clean_error(rtml("predict"), "no checkpoints named 'linear'", "run `rtml train` first")
    (trained_dir / "checkpoints" / "linear").mkdir(parents=True)
    assert_clean_error(rtml("predict"), "no usable checkpoint of 'linear'", "there is none")


def test_without_features_says_what_to_run(rtml):
    assert_clean_error(rtml("predict"), "no features log", "rtml features")


@pytest.mark.slow
def test_two_models_side_by_side_and_a_challenger_added_later_catches_up(rtml, trained_dir):
    assert rtml("train", "--model", "pa", "--json").exit_code == 0
    s = predict(rtml, "--name", "linear", "--name", "pa")
    assert set(s["models"]) == {"linear", "pa"}
    assert_each_row_once(trained_dir, "linear")
    pa = assert_each_row_once(trained_dir, "pa")
    lin = predictions(trained_dir).filter(pl.col("model") == "linear")
    assert pa["prediction"].to_list() != lin["prediction"].to_list()
    # a challenger that joins later starts at the beginning (earliest); the others go on
    assert rtml("train", "--model", "bayes", "--json").exit_code == 0
    more_market(rtml)
    s = predict(rtml, "--name", "linear", "--name", "bayes")
    n_new = features(trained_dir).height - lin.height
    assert s["models"]["linear"]["predicted_this_run"] == n_new
    assert s["models"]["bayes"]["predicted_this_run"] == features(trained_dir).height
    for m in ("linear", "bayes"):
        assert_each_row_once(trained_dir, m)
    # the challenger's history was predicted by a model that had learned it: marked in sample
    for m in ("linear", "pa", "bayes"):
        assert_in_sample_marked(trained_dir, m)
    bayes = predictions(trained_dir).filter(pl.col("model") == "bayes")
    assert bayes["in_sample"].sum() > 0.9 * bayes.height


def assert_in_sample_marked(data_dir: Path, model: str, horizon: int = 5) -> None:
    """A prediction is in sample when its model had learned an example whose target ends after
    the bar's close: one with a time later than `horizon` bars before the bar's. Derived here
    from each checkpoint's consumed offsets and the examples log, not from its trained-until."""
    from datetime import timedelta

    store = CheckpointStore(data_dir, model)
    examples = ParquetLog(data_dir, "examples").read_all(columns=["offset", "symbol", "ts"])
    preds = predictions(data_dir).filter(pl.col("model") == model, pl.col("in_sample").is_not_null())
    for version in preds["model_version"].unique().to_list():
        offsets = store.get(version).manifest["offsets"]
        learned = examples.filter(pl.col("offset") <= pl.col("symbol").replace_strict(offsets, default=-1))
        newest = learned["ts"].max()
        mine = preds.filter(pl.col("model_version") == version)
        expected = [newest is not None and newest > ts - timedelta(minutes=horizon) for ts in mine["ts"]]
        assert mine["in_sample"].to_list() == expected, (model, version)


@pytest.mark.slow
def test_predictions_made_as_the_market_runs_are_out_of_sample_and_older_parts_without_the_mark_read(
    rtml, examples_dir
):
    """A log written before `in_sample` existed reads on, with nulls for the old rows."""
    feats = features(examples_dir).sort("symbol", "offset")
    old = ParquetLog(examples_dir, "predictions")
    with old.writer() as w:  # the first 3 rows of each symbol, as an older rtml wrote them
        for (sym,), rows in feats.group_by("symbol", maintain_order=True):
            w.append(
                sym,
                rows.head(3).select(
                    "ts",
                    "symbol",
                    pl.col("offset").alias("features_offset"),
                    pl.lit("linear").alias("model"),
                    pl.lit(0.0).alias("prediction"),
                    pl.lit(1, pl.Int64).alias("model_version"),
                    pl.col("ts").alias("model_trained_until"),
                    pl.lit(0.0).alias("latency_ms"),
                ),
            )
    assert rtml("train", "--json").exit_code == 0
    first = predict(rtml)["predicted_this_run"]
    # then as the market runs: each bar predicted before its example is learned
    for _ in range(3):
        more_market(rtml, 10_000)
        predict(rtml)
        assert rtml("train", "--json").exit_code == 0
    p = predictions(examples_dir).sort("offset")
    assert_each_row_once(examples_dir)
    assert p["in_sample"].head(3 * 3).is_null().all()  # the old parts: unknown
    marked = p.filter(pl.col("in_sample").is_not_null())
    assert_in_sample_marked(examples_dir, "linear")
    end = dict(feats.group_by("symbol").agg(pl.col("offset").max()).rows())  # the history's last rows
    in_history = pl.col("features_offset") <= pl.col("symbol").replace_strict(end)
    history, live = marked.filter(in_history), marked.filter(~in_history)
    assert history.height == first
    assert history["in_sample"].sum() > 0.9 * history.height  # the history, predicted after learning it
    assert live.height > 0 and not live["in_sample"].any()
    r = rtml("compact", "--name", "predictions", "--json")  # parts with and without the column merge
    assert r.exit_code == 0, r.output
    assert_frame_equal(predictions(examples_dir).sort("offset"), p)


@pytest.mark.slow
def test_from_latest_skips_the_history_and_remembers_where_it_started(rtml, trained_dir):
    assert predict(rtml, "--from", "latest")["predicted_this_run"] == 0
    # a restart does not skip what arrived meanwhile, and --from no longer matters
    more_market(rtml)
    before = features(trained_dir)
    s = predict(rtml, "--from", "earliest")
    p = predictions(trained_dir)
    assert s["predicted_this_run"] == p.height > 0
    assert p.height < before.height  # the history before the first run was skipped


def test_a_corrupt_or_tampered_checkpoint_is_skipped_and_the_old_model_serves(rtml, trained_dir, tmp_path):
    store = CheckpointStore(trained_dir, "linear")
    good = store.list()[-1]
    # v2: a damaged manifest; v3: a pickle changed after its manifest was written; v4: a
    # valid-looking manifest whose pickle would run code when loaded
    (store.dir / "0000000002.json").write_text("{not json")
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"model": _Evil(str(marker))})
    manifest = {k: v for k, v in good.manifest.items() if k not in ("pickle", "version", "signature")}
    write_checkpoint(store.dir, 3, good.pickle_path.read_bytes(), {**manifest, "version": 3}, None)
    (store.dir / "0000000003.pkl").write_bytes(good.pickle_path.read_bytes()[:-1] + b"X")
    write_checkpoint(store.dir, 4, good.pickle_path.read_bytes(), {**manifest, "version": 4}, None)
    (store.dir / "0000000004.pkl").write_bytes(evil)
    s = predict(rtml)
    m = s["models"]["linear"]
    assert m["version"] == good.version and m["versions_served"] == [good.version]
    skipped = " | ".join(m["skipped_checkpoints"])
    assert "0000000002.json is not readable JSON" in skipped
    assert "0000000003.pkl does not match the sha256" in skipped
    assert "0000000004.pkl does not match the sha256" in skipped
    assert not marker.exists(), "an unverified pickle was loaded"
    assert_each_row_once(trained_dir)


def test_with_a_key_unsigned_or_wrongly_signed_checkpoints_are_refused(rtml, trained_dir, tmp_path, monkeypatch):
    store = CheckpointStore(trained_dir, "linear")
    good = store.list()[-1]
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"model": _Evil(str(marker))})
    manifest = {k: v for k, v in good.manifest.items() if k not in ("pickle", "version", "signature")}
    write_checkpoint(store.dir, 2, evil, {**manifest, "version": 2}, None)  # a correct sha256, no signature
    write_checkpoint(store.dir, 3, evil, {**manifest, "version": 3}, b"not-the-key")
    monkeypatch.setenv("RTML_CHECKPOINT_KEY", "the-key")
    r = rtml("predict", "--json")
    assert_clean_error(r, "no usable checkpoint", "not signed", "wrong signature")  # v1 is unsigned too
    assert not marker.exists()
    write_checkpoint(store.dir, 4, good.pickle_path.read_bytes(), {**manifest, "version": 4}, b"the-key")
    s = predict(rtml)
    assert s["models"]["linear"]["version"] == 4 and not marker.exists()


@pytest.mark.slow
def test_features_rebuilt_since_the_predictions_is_an_error(rtml, trained_dir):
    predict(rtml)
    assert rtml("features", "--rebuild", "--json").exit_code == 0
    assert_clean_error(rtml("predict"), "rebuilt", "start afresh")


def test_a_big_checkpoint_loads_the_same_beside_a_serving_thread(tmp_path):
    """Hot swap unpickles big pickles with the pure-Python unpickler and the collector paused."""
    import gc

    store = CheckpointStore(tmp_path, "big")
    payload = {"model": {"weights": [float(i) for i in range(150_000)], "names": [str(i) for i in range(30_000)]}}
    data = pickle.dumps(payload)
    assert len(data) > 1_000_000
    manifest = {"spec": {"model": "x", "kind": "regressor"}, "versions": {"river": __import__("river").__version__}}
    write_checkpoint(store.dir, 1, data, {**manifest, "version": 1}, None)
    cp = store.get(1)
    assert cp.load(yielding=True) == payload == cp.load()
    assert gc.isenabled()


class _Evil:
    """Unpickling this creates a file: the proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- follow mode, in real subprocesses -----------------------------------------------------------


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_follow_waits_for_a_first_checkpoint_then_serves_it(rtml, trained_dir):
    shutil.rmtree(trained_dir / "checkpoints")
    p = rtml_process(["predict", "--follow", "--jsonl", "--poll", "0.1", "--data-dir", str(trained_dir)])
    try:
        time.sleep(2.0)
        assert p.poll() is None
        assert rtml("train", "--json").exit_code == 0
        log = ParquetLog(trained_dir, "predictions")
        deadline = time.monotonic() + 30
        while log.read_all().height < features(trained_dir).height and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "waiting for a checkpoint of 'linear'" in err
    streamed = read_jsonl(out)
    logged = assert_each_row_once(trained_dir)
    assert [(r["symbol"], r["features_offset"], r["prediction"]) for r in streamed] == list(
        zip(logged["symbol"], logged["features_offset"], logged["prediction"], strict=True)
    )
    assert {r["model_version"] for r in streamed} == {1}


@pytest.mark.slow
def test_hot_swap_while_rows_flow_and_kill_9_loses_and_repeats_nothing(rtml, trained_dir):
    """Ingest, features and train follow a paced market; predict --follow is killed and restarted;
    a corrupt checkpoint of the second model is dropped in meanwhile and reported once."""
    d = str(trained_dir)
    assert rtml("train", "--model", "pa", "--json").exit_code == 0
    ingest = rtml_process(
        ["ingest", "--speed", "600", "--duration", "20", "--flush-interval", "0.2", "--json", "--data-dir", d]
    )
    feats = rtml_process(["features", "--follow", "--poll", "0.1", "--json", "--data-dir", d])
    trainer = rtml_process(
        ["train", "--follow", "--checkpoint-every", "3", "--poll", "0.05", "--json", "--data-dir", d]
    )
    predict_args = [
        "predict",
        "--follow",
        "--jsonl",
        "--name",
        "linear",
        "--name",
        "pa",
        "--poll",
        "0.1",
        "--data-dir",
        d,
    ]
    errs = []
    # --jsonl to files: a pipe nobody reads fills up and blocks the predictor (it did, here)
    jsonl = [trained_dir.parent / "first.jsonl", trained_dir.parent / "second.jsonl"]
    try:
        with jsonl[0].open("w") as sink:
            p = rtml_process(predict_args, stdout=sink)
        time.sleep(5)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        with jsonl[1].open("w") as sink:
            p = rtml_process(predict_args, stdout=sink)
        time.sleep(2)
        pa = CheckpointStore(trained_dir, "pa")
        (pa.dir / "0000000002.json").write_text("{damaged")  # reported once, pa v1 keeps serving
        assert ingest.wait(120) == 0
        time.sleep(1.5)
        feats.send_signal(signal.SIGTERM)
        assert feats.wait(60) == 0
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        errs.append(err)
        assert p.returncode == 0, err
    finally:
        for proc in (ingest, feats, trainer):
            proc.kill()
        trainer.wait(30)
    assert errs[0].count("0000000002.json is not readable JSON") == 1
    predict(rtml, "--name", "linear", "--name", "pa")  # whatever arrived after the stop
    lin = assert_each_row_once(trained_dir, "linear")
    pa_rows = assert_each_row_once(trained_dir, "pa")
    assert pa_rows["model_version"].unique().to_list() == [1]
    # the trainer published new versions while rows flowed, and the running predictor swapped
    # them in (a swap within one process; how many depends on the machine's load)
    published = [json.loads(line) for line in jsonl[1].read_text().splitlines()]
    served = {r["model_version"] for r in published if r["model"] == "linear"}
    assert len(served) >= 2, served
    # what --jsonl wrote is what the log holds, the second run's rows whole
    logged = {(r["symbol"], r["features_offset"], r["model"]): r["model_version"] for r in lin.iter_rows(named=True)}
    assert all(
        logged[r["symbol"], r["features_offset"], r["model"]] == r["model_version"]
        for r in published
        if r["model"] == "linear"
    )
    for sym, part in lin.sort("offset").group_by("symbol"):
        v = part["model_version"].to_list()
        assert v == sorted(v), f"{sym}: a model older than one already trained_dir came back"


@pytest.mark.slow
def test_sigterm_exits_0_after_publishing(rtml, trained_dir):
    p = rtml_process(["predict", "--follow", "--poll", "0.1", "--data-dir", str(trained_dir)])
    deadline = time.monotonic() + 30
    while (
        ParquetLog(trained_dir, "predictions").read_all().height < features(trained_dir).height
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert_each_row_once(trained_dir)
    assert os.path.exists(trained_dir / "state" / "predict.json")
