"""Damaged state and careless input: clear errors that say what is wrong and what to do."""

from __future__ import annotations

import errno
import json
import shutil
from threading import Event

import polars as pl
import pytest

from rtml_cli.beat import BEAT_FILE
from rtml_cli.errors import LogError
from rtml_cli.features import STATE_FILE
from rtml_cli.ingest import IngestOptions, open_source, run_ingest
from rtml_cli.log import LogWriter, ParquetLog
from tests.conftest import assert_clean_error
from tests.test_features import write_ticks


@pytest.mark.slow
def test_a_deleted_features_state_is_named_by_every_stage(rtml, examples_dir):
    """train used to say the examples "were reexamples_dir" (nothing was), predict that there was "no
    features log" (there was)."""
    assert rtml("train", "--json").exit_code == 0
    (examples_dir / STATE_FILE).unlink()
    for command in ("train", "predict", "backtest"):
        assert_clean_error(rtml(command), f"no {STATE_FILE}", "rtml features --rebuild")
    assert_clean_error(rtml("features"), f"no {STATE_FILE}", "--rebuild")
    assert rtml("features", "--rebuild", "--json").exit_code == 0
    assert rtml("predict", "--json").exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("bars", "many"), ("tick_offset", 1.5), ("max_ts", "late"), ("late", None)])
def test_a_state_field_of_the_wrong_type_is_a_damaged_state(rtml, examples_dir, field, value):
    path = examples_dir / STATE_FILE
    doc = json.loads(path.read_text())
    doc["symbols"]["BTC/USD"][field] = value
    path.write_text(json.dumps(doc))
    assert_clean_error(rtml("features"), "is damaged", field, "--rebuild")


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("../../x:y", "is not module:factory"),
        ("/tmp/evil.py:f", "is not module:factory"),
        ("my_models:not a name", "is not module:factory"),
        ("broken_models:f", "failed: ZeroDivisionError"),
    ],
)
def test_a_model_that_is_not_an_importable_name_is_a_clear_error(
    rtml, examples_dir, tmp_path, monkeypatch, spec, fragment
):
    (tmp_path / "broken_models.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_clean_error(rtml("train", "--model", spec), fragment)


# -- damaged and missing parts ---------------------------------------------------------------------


@pytest.fixture
def parted(rtml, data_dir):
    """Ticks in several parts per symbol, and their features and examples."""
    assert rtml("ingest", "--max-ticks", "60000", "--flush-every", "8000", "--json").exit_code == 0
    assert rtml("features", "--json").exit_code == 0
    assert len(ParquetLog(data_dir, "ticks").parts("BTC/USD")) >= 3
    return data_dir


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_a_damaged_part_is_a_clear_error_naming_it(rtml, parted, how):
    part = ParquetLog(parted, "examples").parts("BTC/USD")[0]
    damage(part.path, how)
    for command in (["backtest"], ["train", "--name", "other"]):
        assert_clean_error(rtml(*command), str(part.path), "is damaged")
    ticks = ParquetLog(parted, "ticks").parts("ETH/USD")[1]
    damage(ticks.path, how)
    for command in (["compact"], ["features", "--rebuild"]):
        assert_clean_error(rtml(*command), str(ticks.path), "is damaged")


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1])
def test_a_missing_part_is_reported_never_skipped(rtml, parted, which):
    """The first part used to vanish unnoticed (a rebuild had fewer bars); a middle one gave
    "kept changing while being read; try again", which retrying never fixed."""
    part = ParquetLog(parted, "ticks").parts("SOL/USD")[which]
    part.path.unlink()
    assert_clean_error(rtml("features", "--rebuild"), f"part {part.first}-{part.last} of ticks/SOL/USD is missing")


@pytest.mark.slow
def test_a_missing_last_part_or_partition_is_reported_by_features_and_ingest(rtml, parted):
    """A missing last part used to look like a shorter log: a rebuild had fewer bars, and
    ingest handed its offsets to new ticks, which a builder that had read them skipped."""
    ticks = ParquetLog(parted, "ticks")
    last = ticks.parts("SOL/USD")[-1]
    last.path.unlink()
    missing = f"part {last.first}-{last.last} of ticks/SOL/USD is missing"
    assert_clean_error(rtml("features"), missing)  # the builder had read them
    assert_clean_error(rtml("features", "--rebuild"), missing)  # ingest's record says they were written
    assert_clean_error(rtml("ingest", "--max-ticks", "100"), missing)  # and will not reuse their offsets
    assert ticks.last_offset("SOL/USD") == last.first - 1  # nothing was appended
    gone = ticks.parts("ETH/USD")
    shutil.rmtree(ticks.partition_path("ETH/USD"))
    assert_clean_error(rtml("features", "--rebuild"), f"part 0-{gone[-1].last} of ticks/ETH/USD is missing")


@pytest.mark.slow
def test_without_ingests_record_the_builder_still_sees_a_lost_tail(rtml, parted):
    (parted / BEAT_FILE).unlink()
    last = ParquetLog(parted, "ticks").parts("BTC/USD")[-1]
    last.path.unlink()
    assert_clean_error(rtml("features"), f"part {last.first}-{last.last} of ticks/BTC/USD is missing")
    (parted / BEAT_FILE).write_text('{"started": 1, "beat": "soon"')
    assert_clean_error(rtml("features"), str(parted / BEAT_FILE), "is damaged")


def _small_disk(size: int) -> None:
    """In the child: files may not grow past `size` bytes, and writing past that fails (EFBIG)
    instead of killing the process, as a write to a full disk fails."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_and_the_next_run_goes_on(data_dir):
    """polars raises its own exception type for a failed write; it used to escape as a
    traceback (printed twice by ingest)."""
    import functools
    import shutil
    import subprocess
    import sys

    def run(*args, limit=None):
        return subprocess.run(
            [sys.executable, "-m", "rtml_cli", *args, "--data-dir", str(data_dir)],
            preexec_fn=functools.partial(_small_disk, limit) if limit else None,
            capture_output=True,
            text=True,
        )

    r = run("ingest", "--max-ticks", "200000", "--flush-every", "50000", limit=300_000)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("Error: cannot write") == 1 and "nothing of it was published" in r.stderr
    ticks = ParquetLog(data_dir, "ticks")
    assert sum(ticks.row_count(s) for s in ticks.partitions()) == 0  # no part, no partial part
    assert run("ingest", "--max-ticks", "60000").returncode == 0
    assert sum(ticks.row_count(s) for s in ticks.partitions()) == 60000
    r = run("features", limit=3_000)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Error: cannot write" in r.stderr, r.stderr
    assert run("features").returncode == 0
    clean = data_dir.parent / "clean"  # the same ticks, examples_dir where nothing failed
    shutil.copytree(data_dir / "ticks", clean / "ticks")
    assert subprocess.run([sys.executable, "-m", "rtml_cli", "features", "--data-dir", str(clean)]).returncode == 0
    for name in ("features", "examples"):
        got, want = ParquetLog(data_dir, name).read_all(), ParquetLog(clean, name).read_all()
        assert got.height == want.height > 600 and got["close"].to_list() == want["close"].to_list()


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
        run_ingest(data_dir, src, IngestOptions(max_ticks=5000), stop, batches)
    ticks = ParquetLog(data_dir, "ticks").read_all()
    assert ticks.height > 0
    assert ticks.select(pl.struct("symbol", "trade_id").is_unique().all()).item()


def test_binary_sql_and_damaged_state_are_clear_errors(rtml, data_dir, tmp_path):
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(0, 300, 5)]])
    binary = tmp_path / "q.sql"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert_clean_error(rtml("features", "--sql", str(binary)), "not a UTF-8 text file")
    assert rtml("features").exit_code == 0
    (data_dir / "state" / "features.json").write_text("{not json")
    assert_clean_error(rtml("features"), "is damaged", "--rebuild")
    assert rtml("features", "--rebuild").exit_code == 0
