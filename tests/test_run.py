"""`rtml run`: the four stages as supervised processes, one system."""

from __future__ import annotations

import json
import signal
import time

import polars as pl
import pytest

from rtml_cli.log import ParquetLog
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


def _pid(data_dir, stage):
    return snapshot(data_dir)["stages"].get(stage, {}).get("pid") if data_dir.is_dir() else None


@pytest.mark.slow
def test_a_run_starts_every_stage_restarts_a_killed_one_and_stops_in_order(tmp_path):
    d = tmp_path / "data"
    run = rtml_process(["run", "--speed", "2000", "--checkpoint-every", "50", "--json", "--data-dir", str(d)])
    try:
        _wait_for("predictions", lambda: ParquetLog(d, "predictions").partitions())
        trainer = _wait_for("the trainer", lambda: _pid(d, "train linear"))
        import os

        os.kill(trainer, signal.SIGKILL)
        _wait_for("a new trainer", lambda: (_pid(d, "train linear") or trainer) != trainer)
        time.sleep(1.0)
    finally:
        run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    summary = json.loads(out)
    stages = summary["stages"]
    assert list(stages) == ["ingest", "features", "train linear", "predict"]
    assert stages["train linear"]["restarts"] == 1
    assert all(s["state"] == "stopped" and s["exit_code"] == 0 for s in stages.values()), stages
    assert "train linear died (exit -9)" in err
    for s in stages.values():
        assert (d / "logs" / s["log"].split("/")[-1]).stat().st_size > 0
    # stopped in pipeline order, each after catching up: nothing is left unread between two logs
    consumers = summary["status"]["consumers"]
    assert consumers["features"]["behind_rows"] == 0
    assert consumers["train linear"]["behind_rows"] == 0
    assert consumers["predict linear"]["behind_rows"] == 0
    # every features row predicted once, model versions never going back
    p = ParquetLog(d, "predictions").read_all()
    f = ParquetLog(d, "features").read_all()
    assert p.height == f.height and p.select(pl.struct("symbol", "features_offset").is_unique().all()).item()
    for _, part in p.sort("features_offset").group_by("symbol"):
        assert part["model_version"].drop_nulls().diff().drop_nulls().min() >= 0


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
