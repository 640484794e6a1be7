"""`rtml run`: the four stages as supervised processes, one system."""

from __future__ import annotations

import json
import signal
import time

import polars as pl
import pytest

from rtml_cli.status import snapshot
from tests.conftest import assert_clean_error, rtml_process


def _wait_for(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pid(data_dir, stage, url=None):
    if url is None:
        return snapshot(data_dir)["stages"].get(stage, {}).get("pid") if data_dir.is_dir() else None
    from rtml_cli import atomic
    from rtml_cli.logs import LogStore

    writes = {"ingest": "ticks", "features": "features", "predict": "predictions"}
    if stage in writes:
        return atomic.holder(LogStore(data_dir, url).lock_path(writes[stage]))
    return atomic.holder(data_dir / "checkpoints" / stage.removeprefix("train ") / ".train.lock")


@pytest.mark.slow
def test_with_no_restart_a_dead_stage_ends_the_run_with_an_error(tmp_path):
    d = tmp_path / "data"
    run = rtml_process(["run", "--speed", "2000", "--no-restart", "--json", "--data-dir", str(d)])
    try:
        features = _wait_for("the feature builder", lambda: _pid(d, "features"))
        import os

        os.kill(features, signal.SIGKILL)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 1
    assert "features died (exit -9) and --no-restart was given" in err
    assert json.loads(out)["failed"]["stage"] == "features"


def test_bad_run_options_are_clear_errors(rtml):
    assert_clean_error(rtml("run", "--model", "nope"), "nope")
    assert_clean_error(rtml("run", "--source", "replay"), "--path", code=2)
    assert_clean_error(rtml("run", "--source", "kraken", "--speed", "10"), "--speed", code=2)


def _assert_pipeline_invariants(d, url=None):
    """What a run must leave, whatever was killed when: every tick once; features and
    examples equal to a one-shot build of the same ticks; each example learned once; each
    features row predicted once per model; model versions never going back. `url`: the
    run's logs were on Kafka there (the one-shot build is on Parquet)."""
    from rtml_cli.logs import LogStore
    from tests.test_features import assert_same, build, copy_ticks, features

    store = LogStore(d, url)
    ticks = store.open("ticks").read_all()
    assert ticks.select(pl.struct("symbol", "trade_id").is_unique().all()).item()
    for _, part in ticks.group_by("symbol"):
        assert part["offset"].sort().to_list() == list(range(part.height))
    ref = d.parent / "one-shot"
    copy_ticks(d, ref, logs=store)
    build(ref)
    # the run's builder stopped with its newest bars open; the one-shot build closed no more
    for name in ("features", "examples"):
        assert_same(features(d, name, store), features(ref, name))
    from rtml_cli.checkpoint import CheckpointStore

    newest = CheckpointStore(d, "linear").list()[-1].manifest
    examples = store.open("examples")
    assert newest["examples_learned"] == sum(examples.row_count(s) for s in examples.partitions())
    p = store.open("predictions").read_all()
    f = store.open("features").read_all()
    assert p.height == f.height and p.select(pl.struct("symbol", "features_offset").is_unique().all()).item()
    for _, part in p.sort("features_offset").group_by("symbol"):
        assert part["model_version"].drop_nulls().diff().drop_nulls().min() >= 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["parquet", "kafka"])
def test_chaos_kill_9_of_every_stage_again_and_again_loses_and_repeats_nothing(tmp_path, backend, request):
    """Ten SIGKILLs, every stage hit at least twice, each restarted by the supervisor; a
    reader beside it never sees a torn part or an unverifiable checkpoint. On both backends:
    the Parquet log, and Kafka topics on a real broker.

    The longer variant is opt-in: `RTML_CHAOS_ROUNDS=10 RTML_CHAOS_SEED=7 pytest -k chaos`
    kills 100 times (about a minute a round), with another random order and pace."""
    import os
    import random
    import threading

    from rtml_cli.checkpoint import CheckpointStore

    d = tmp_path / "data"
    rounds = int(os.environ.get("RTML_CHAOS_ROUNDS", "1"))
    rng = random.Random(int(os.environ.get("RTML_CHAOS_SEED", "5")))
    url = request.getfixturevalue("kafka_url") if backend == "kafka" else None
    on = ["--log", url] if url else []
    run = rtml_process(["run", "--speed", "1500", "--json", "--data-dir", str(d), *on])
    problems: list[str] = []
    done = threading.Event()

    def reader():  # reads every log and the newest checkpoint, over and over
        from rtml_cli.logs import LogStore

        logs = LogStore(d, url)
        while not done.is_set():
            try:
                for name in ("ticks", "features", "examples", "predictions"):
                    log = logs.open(name)
                    for sym in log.partitions():
                        rows = log.read_after(sym)
                        if rows.height and rows["offset"].to_list() != list(range(rows.height)):
                            problems.append(f"{name}/{sym}: offsets not contiguous")
                store = CheckpointStore(d, "linear")
                if store.dir.is_dir():
                    valid, _, _ = store.latest_valid()
                    if store.list() and valid is None:
                        problems.append("no verifiable checkpoint")
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    watcher = threading.Thread(target=reader, daemon=True)
    kills = {"ingest": 0, "features": 0, "train linear": 0, "predict": 0}
    try:
        from rtml_cli.logs import LogStore

        predictions = LogStore(d, url).open("predictions")
        _wait_for("predictions", lambda: predictions.partitions(), timeout=90)
        watcher.start()
        order = []
        for _ in range(rounds):  # 10 kills a round: ingest and features three times, train and predict twice
            one = ["ingest", "features"] * 3 + ["train linear", "predict"] * 2
            rng.shuffle(one)
            order += one
        for stage in order:
            pid = _wait_for(f"{stage} running", lambda s=stage: _pid(d, s, url), timeout=90)
            os.kill(pid, signal.SIGKILL)
            kills[stage] += 1
            time.sleep(rng.uniform(0.4, 1.5))
        _wait_for("every stage back", lambda: all(_pid(d, s, url) for s in kills), timeout=90)
        time.sleep(2.0)
    finally:
        done.set()
        run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=180)
    watcher.join(10)
    assert run.returncode == 0, err
    summary = json.loads(out)
    stages = summary["stages"]
    assert list(stages) == ["ingest", "features", "train linear", "predict"]  # pipeline order
    assert {s: stages[s]["restarts"] for s in kills} == kills
    assert all(s["state"] == "stopped" and s["exit_code"] == 0 for s in stages.values()), stages
    assert err.count("died (exit -9), restarting in") == sum(kills.values())
    for s in stages.values():
        assert (d / "logs" / s["log"].split("/")[-1]).stat().st_size > 0
    assert not problems, problems[:5]
    # stopped in pipeline order, each once it had caught up: nothing left unread between two logs
    consumers = summary["status"]["consumers"]
    assert [consumers[c]["behind_rows"] for c in ("features", "train linear", "predict linear")] == [0, 0, 0]
    _assert_pipeline_invariants(d, url)


@pytest.mark.slow
def test_the_stages_do_not_outlive_a_killed_supervisor(tmp_path):
    """A `rtml run` killed with kill -9 used to leave its four stages running, holding their
    locks, so that the next run could not start them."""

    d = tmp_path / "data"
    run = rtml_process(["run", "--speed", "600", "--json", "--data-dir", str(d)])
    try:
        pids = _wait_for(
            "every stage", lambda: (p := [_pid(d, s) for s in ("ingest", "features", "predict")]) and all(p) and p
        )
    finally:
        run.kill()
        run.wait(30)
    _wait_for("the stages to exit", lambda: not any(_alive(p) for p in pids), timeout=60)
    assert not any(snapshot(d)["stages"][s]["running"] for s in ("ingest", "features", "predict"))


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_run_whose_ingest_ends_without_a_trade_ends_too(tmp_path):
    """A finite ingest that wrote nothing (here: --symbols keeps none of the file's trades)
    used to leave the run waiting for a feature builder that had nothing to record."""
    trades = tmp_path / "XBTUSD.csv"
    trades.write_text("1704067200,42000.5,0.1\n1704067201,42001.5,0.2\n")
    d = tmp_path / "data"
    started = time.monotonic()
    run = rtml_process(
        ["run", "--source", "replay", "--path", str(trades), "--symbols", "ETH/USD", "--json", "--data-dir", str(d)]
    )
    try:
        out, err = run.communicate(timeout=90)
    finally:
        run.kill()
    assert run.returncode == 0, err
    stages = json.loads(out)["stages"]
    assert stages["ingest"]["state"] in ("finished", "stopped") and stages["ingest"]["restarts"] == 0
    assert time.monotonic() - started < 45  # not waiting on
