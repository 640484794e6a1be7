"""`rtml status`: what it reports equals what the data directory holds, at any moment."""

from __future__ import annotations

import json
import signal
import time

import pytest

from rtml_cli.checkpoint import CheckpointStore
from rtml_cli.log import ParquetLog
from tests.conftest import assert_clean_error, rtml_process


def status(rtml) -> dict:
    r = rtml("status", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_a_missing_data_dir_is_an_error_and_an_empty_one_says_so(rtml, data_dir):
    assert_clean_error(rtml("status"), "there is no data directory")
    data_dir.mkdir()
    r = rtml("status")
    assert r.exit_code == 0 and "has no data" in r.output
    assert status(rtml)["empty"] is True


def test_every_figure_equals_a_recomputation_from_the_logs(rtml, trained_dir):
    assert rtml("predict").exit_code == 0
    assert rtml("ingest", "--max-ticks", "3000").exit_code == 0  # new ticks the builder has not read
    snap = status(rtml)
    assert snap["empty"] is False
    for name in ("ticks", "features", "examples", "predictions"):
        rows = ParquetLog(trained_dir, name).read_all(columns=["symbol", "ts"])
        log = snap["logs"][name]
        assert log["rows"] == rows.height
        assert log["partitions"] == rows["symbol"].n_unique()
        for (sym,), part in rows.group_by("symbol"):
            assert log["symbols"][sym]["rows"] == part.height
            assert log["symbols"][sym]["newest_ts"] == part["ts"].max().isoformat()
    # the builder is exactly the 3,000 new ticks behind; train and predict are caught up
    assert snap["consumers"]["features"]["behind_rows"] == 3000
    assert snap["consumers"]["train linear"]["behind_rows"] == 0
    assert snap["consumers"]["predict linear"]["behind_rows"] == 0
    newest = CheckpointStore(trained_dir, "linear").list()[-1]
    cp = snap["checkpoints"]["linear"]
    assert (cp["version"], cp["examples_learned"]) == (newest.version, newest.manifest["examples_learned"])
    assert cp["verified"] == "ok" and cp["diverged"] is False
    assert not any(s["running"] for s in snap["stages"].values())
    predicted = ParquetLog(trained_dir, "predictions").read_all(columns=["ts"])["ts"].max()
    assert snap["freshness"]["newest_prediction"] == predicted.isoformat()
    ticks = ParquetLog(trained_dir, "ticks").read_all(columns=["ts"])["ts"].max()
    assert snap["freshness"]["newest_tick"] == ticks.isoformat()
    bar_s = 60
    expected = (ticks - predicted).total_seconds() - bar_s
    assert snap["freshness"]["market_lag_s"] == pytest.approx(expected, abs=0.1)


def test_a_running_stage_is_seen_by_its_lock_without_taking_it(rtml, trained_dir, monkeypatch):
    import fcntl
    import os

    store = CheckpointStore(trained_dir, "linear")
    with store.lock():
        taken = []
        monkeypatch.setattr(fcntl, "flock", lambda *a: taken.append(a))  # a stage starting now is not refused
        snap = status(rtml)
        assert taken == []
        assert snap["stages"]["train linear"] == {"pid": os.getpid(), "running": True}
    monkeypatch.undo()
    assert status(rtml)["stages"]["train linear"] == {"pid": None, "running": False}


@pytest.mark.slow
def test_watch_keeps_looking_until_stopped(trained_dir):
    p = rtml_process(["status", "--watch", "--interval", "0.3", "--json", "--data-dir", str(trained_dir)])
    time.sleep(2.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    looks = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(looks) >= 2 and all(look["logs"]["ticks"]["rows"] > 0 for look in looks)


def test_a_damaged_features_state_is_reported_not_crashed_on(rtml, examples_dir):
    (examples_dir / "state" / "features.json").write_text("{oops")
    assert "is damaged" in status(rtml)["consumers"]["features"]["problem"]


def test_rows_count_every_partition_even_a_compacted_one(rtml, examples_dir):
    assert rtml("compact").exit_code == 0
    rows = ParquetLog(examples_dir, "ticks").read_all(columns=["symbol"]).height
    assert status(rtml)["logs"]["ticks"]["rows"] == rows


def test_a_manifest_of_the_wrong_types_is_shown_not_crashed_on(rtml, trained_dir):
    odd = trained_dir / "checkpoints" / "odd"
    odd.mkdir()
    (odd / "0000000001.json").write_text(json.dumps({"examples_learned": "x", "trained_until": 5}))
    (odd / "0000000001.pkl").write_bytes(b"not a pickle")
    r = rtml("status")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    cp = status(rtml)["checkpoints"]["odd"]
    assert cp["examples_learned"] is None and cp["trained_until"] is None and cp["verified"] != "ok"
