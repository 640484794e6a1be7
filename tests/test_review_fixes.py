"""Regressions for defects a review found: each test failed before its fix."""

from __future__ import annotations

import errno
import json
from threading import Event

import polars as pl
import pytest

from rtml_cli.errors import LogError
from rtml_cli.features import FeatureBuilder, FeatureSpec
from rtml_cli.ingest import IngestOptions, open_source, run_ingest
from rtml_cli.log import LogWriter, ParquetLog
from tests.conftest import assert_clean_error
from tests.test_features import features, write_ticks


def test_a_failed_flush_is_not_written_twice(data_dir, monkeypatch):
    real = LogWriter.append
    calls = {"n": 0}

    def full_disk_once(self, symbol, frame):
        calls["n"] += 1
        if calls["n"] == 2:  # the second symbol of the first flush
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, symbol, frame)

    monkeypatch.setattr(LogWriter, "append", full_disk_once)
    stop = Event()
    src, batches = open_source("synthetic", data_dir, stop, max_ticks=5000)
    with pytest.raises(LogError, match="No space left on device"):
        run_ingest(data_dir, src, IngestOptions(max_ticks=5000), stop, batches=batches)
    ticks = ParquetLog(data_dir, "ticks").read_all()
    assert ticks.height > 0
    assert ticks.select(pl.struct("symbol", "trade_id").is_unique().all()).item()


def test_follow_catching_up_a_backlog_does_not_close_a_busy_symbols_bars_early(data_dir):
    write_ticks(data_dir, [[(t * 60 + 1, 10, 1, "buy") for t in range(60)]], symbol="A")  # sparse
    write_ticks(data_dir, [[(t * 0.5, 20, 1, "buy") for t in range(7200)]], symbol="B")  # busy
    with FeatureBuilder(data_dir, FeatureSpec(), chunk_ticks=1000) as b:
        stop = Event()
        for rep in b.follow(stop, poll=0.01, grace=0.0):
            if b.backlog() == 0 and rep.ticks == 0:
                stop.set()
        assert b.state["B"].late == 0
    busy = features(data_dir).filter(pl.col("symbol") == "B")
    assert busy["volume"].to_list() == [120.0] * 59  # every closed minute has all its trades


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


@pytest.mark.parametrize("sql, fragment", [
    ("SELECT * REPLACE (ts + INTERVAL 1 MINUTE AS ts), 1.0 AS f FROM bars", "changed `symbol` or `ts`"),
    ("SELECT * REPLACE (CAST(ts AS VARCHAR) AS ts), 1.0 AS f FROM bars", "`ts` and `symbol`"),
])
def test_a_query_that_moves_bars_is_refused(rtml, data_dir, tmp_path, sql, fragment):
    write_ticks(data_dir, [[(t, 100 + t % 7, 1, "buy") for t in range(0, 900, 7)]])
    q = tmp_path / "q.sql"
    q.write_text(sql)
    assert_clean_error(rtml("features", "--sql", str(q)), fragment)


def test_the_stored_bars_are_the_inputs_and_decimal_features_become_floats(rtml, data_dir, tmp_path):
    write_ticks(data_dir, [[(t, 100 + t % 7, 1, "buy") for t in range(0, 900, 7)]])
    q = tmp_path / "q.sql"
    q.write_text("SELECT * REPLACE (close * 2 AS close), 1.5 AS half FROM bars")
    assert rtml("features", "--sql", str(q)).exit_code == 0
    f = features(data_dir)
    assert f.schema["half"] == pl.Float64 and f["half"].to_list() == [1.5] * f.height
    assert f["close"].max() < 110  # the query's doubled close was not stored


def test_a_long_multibyte_symbol_is_rejected_cleanly(rtml, data_dir, tmp_path):
    assert_clean_error(rtml("ingest", "--symbols", "€" * 30, "--max-ticks", "10"), "too long")
    f = tmp_path / "t.csv"
    f.write_text("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
                 f"x,{'€' * 30},1700000000000000,1700000000000000,1,buy,1,1\n"
                 "x,OK,1700000000000000,1700000000000000,2,buy,1,1\n")
    r = rtml("ingest", "--source", "replay", "--path", str(f), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quarantined"] == {"bad_symbol": 1}
    assert ParquetLog(data_dir, "ticks").partitions() == ["OK"]


def test_environment_problems_are_errors_not_tracebacks(rtml, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = rtml("ingest", "--max-ticks", "10", "--data-dir", str(afile / "sub"), data=False)
    assert_clean_error(r, "Not a directory")
    assert_clean_error(rtml("ingest", "--start", "2300-01-01"), "outside 1971..2200")
    assert_clean_error(rtml("ingest", "--seed", "-1"), "--seed", code=2)
    assert_clean_error(rtml("compact", "--log", ".."), "--log", code=2)


def test_binary_sql_and_damaged_state_are_clear_errors(rtml, data_dir, tmp_path):
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(0, 300, 5)]])
    binary = tmp_path / "q.sql"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert_clean_error(rtml("features", "--sql", str(binary)), "not a UTF-8 text file")
    assert rtml("features").exit_code == 0
    (data_dir / "state" / "features.json").write_text("{not json")
    assert_clean_error(rtml("features"), "is damaged", "--rebuild")
    assert rtml("features", "--rebuild").exit_code == 0
