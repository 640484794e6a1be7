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


@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("SELECT * REPLACE (ts + INTERVAL 1 MINUTE AS ts), 1.0 AS f FROM bars", "changed `symbol` or `ts`"),
        ("SELECT * REPLACE (CAST(ts AS VARCHAR) AS ts), 1.0 AS f FROM bars", "`ts` and `symbol`"),
    ],
)
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
    f.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        f"x,{'€' * 30},1700000000000000,1700000000000000,1,buy,1,1\n"
        "x,OK,1700000000000000,1700000000000000,2,buy,1,1\n"
    )
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


# -- the train stage --------------------------------------------------------------------------


@pytest.fixture
def trained_dir(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "60000").exit_code == 0
    assert rtml("features").exit_code == 0
    return data_dir


def test_a_dead_checkpoint_writer_is_replaced_and_training_ends(trained_dir):
    import os
    import signal

    from rtml_cli.train import Trainer, TrainOptions

    with Trainer(trained_dir, TrainOptions(checkpoint_every=20)) as t:
        writer = t.checkpointer._writer
        os.kill(writer.pid, signal.SIGKILL)
        t.run(Event(), follow=False)  # must not hang
        summary = t.summary()
    from rtml_cli.checkpoint import CheckpointStore

    newest = CheckpointStore(trained_dir, "linear").list()[-1]
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


def test_a_failed_final_checkpoint_is_an_error_not_a_success(trained_dir, monkeypatch):
    import rtml_cli.checkpoint as checkpoint_module

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", disk_full)
    from rtml_cli.errors import RtmlError
    from rtml_cli.train import Trainer, TrainOptions

    with (
        pytest.raises(RtmlError, match=r"are in no checkpoint.*No space left"),
        Trainer(trained_dir, TrainOptions()) as t,
    ):
        t.run(Event(), follow=False)


def test_ctrl_c_while_catching_up_stops_soon_and_keeps_what_was_learned(trained_dir):
    from rtml_cli.train import Trainer, TrainOptions

    stop = Event()
    with Trainer(trained_dir, TrainOptions()) as t:
        t.learner.step = (lambda original: lambda x, y: (stop.set(), original(x, y))[1])(t.learner.step)
        t.run(stop, follow=False)
        learned = t.learner.learned
    assert 0 < learned <= 256  # stopped at the first check, not at the end of the backlog
    from rtml_cli.checkpoint import CheckpointStore

    assert CheckpointStore(trained_dir, "linear").list()[-1].manifest["examples_learned"] == learned


@pytest.mark.parametrize("manifest", [{}, [], {"pickle": "x"}, {"pickle": {"size": "1", "sha256": 3}}])
def test_manifests_of_the_wrong_shape_are_skipped_not_crashed_on(rtml, trained_dir, manifest):
    assert rtml("train").exit_code == 0
    (trained_dir / "checkpoints" / "linear" / "0000000099.json").write_text(json.dumps(manifest))
    r = rtml("train", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["resumed_from"] == 1
    listing = rtml("checkpoints", "--json")
    assert listing.exit_code == 0, listing.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "sgd", "--param", "l2=abc"], "check the --param values"),
        (["--param", "ridge=-1"], "does not take these parameters"),
        (["--model", "knn", "--param", "n_neighbors=0"], "check the --param values"),
        (["--model", "os:getcwd"], "not a River model"),
    ],
)
def test_bad_model_parameters_are_errors_not_tracebacks(rtml, trained_dir, args, fragment):
    assert_clean_error(rtml("train", "--name", "bad", *args), fragment)


def test_tuple_parameters_resume(rtml, trained_dir):
    args = ("train", "--model", "hat", "--param", "nominal_attributes=('zz',)", "--name", "tup", "--json")
    assert rtml(*args).exit_code == 0
    again = rtml(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["resumed_from"] is not None


def test_a_hidden_directory_does_not_break_the_listing(rtml, trained_dir):
    assert rtml("train").exit_code == 0
    (trained_dir / "checkpoints" / ".trash").mkdir()
    assert rtml("checkpoints").exit_code == 0


def test_a_diverging_prediction_counts_as_a_miss_and_json_stays_valid():
    from rtml_cli.learner import RollingMetrics

    m = RollingMetrics(10)
    m.update(-1.0, float("nan"))
    m.update(1.0, 2.0)
    d = m.as_dict()
    assert d["hit_rate"] == 0.5 and d["mae"] is None
    json.dumps(d, allow_nan=False)
