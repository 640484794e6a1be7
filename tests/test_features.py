"""rtml features: bars against an independent computation, incremental = one-shot, no look-ahead,
late ticks, examples, exactly-once after crashes, the SQL contract, and the CLI."""

from __future__ import annotations

import json
import math
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from threading import Event

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rtml_cli.features import STATE_FILE, FeatureBuilder, FeatureSpec
from rtml_cli.log import ParquetLog
from tests.conftest import assert_clean_error, render_text, rtml_process, stop_processes, table_rows

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a minute boundary
INT_COLS = ["offset", "symbol", "ts", "n_trades"]


def write_ticks(data_dir: Path, batches: list[list[tuple]], symbol: str = "X") -> None:
    """Append ticks given as (seconds after T0, price, qty, side) in batches (one part each)."""
    log = ParquetLog(data_dir, "ticks")
    with log.writer() as w:
        for batch in batches:
            n0 = w.next_offset(symbol)
            w.append(
                symbol,
                pl.DataFrame(
                    {
                        "ts": [int((T0 + t) * 1e9) for t, *_ in batch],
                        "recv_ts": [int((T0 + t) * 1e9) for t, *_ in batch],
                        "symbol": [symbol] * len(batch),
                        "price": [float(p) for _, p, _, _ in batch],
                        "qty": [float(q) for _, _, q, _ in batch],
                        "side": [s for *_, s in batch],
                        "trade_id": [str(n0 + i) for i in range(len(batch))],
                    }
                ).with_columns(pl.col("ts", "recv_ts").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")),
            )


def copy_ticks(src: Path, dst: Path, keep: pl.Expr | None = None, logs=None) -> None:
    """The ticks of `src` (those matching `keep`; of the store `logs` if given) appended anew to
    the ticks log of `dst`."""
    ticks = logs.open("ticks") if logs is not None else ParquetLog(src, "ticks")
    with ParquetLog(dst, "ticks").writer() as w:
        for sym in ticks.partitions():
            rows = ticks.read_after(sym)
            w.append(sym, (rows if keep is None else rows.filter(keep)).drop("offset"))


def build(data_dir: Path, spec: FeatureSpec | None = None, chunk: int = 2_000_000, clock_ns=None):
    with FeatureBuilder(data_dir, spec or FeatureSpec(), chunk_ticks=chunk) as b:
        if clock_ns is None:
            return b.build()
        return b.step(clock_ns)


def features(data_dir: Path, name: str = "features", logs=None) -> pl.DataFrame:
    log = logs.open(name) if logs is not None else ParquetLog(data_dir, name)
    return log.read_all().sort("symbol", "offset")


def assert_same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Identical rows: exact for ids, times and counts, 1e-9 relative for floats (DuckDB sums)."""
    assert a.columns == b.columns and a.height == b.height
    assert_frame_equal(a.select(INT_COLS), b.select(INT_COLS))
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


# -- bars against an independent computation -----------------------------------------------------


@pytest.mark.slow
def test_ohlcv_matches_an_independent_polars_computation_on_synthetic_ticks(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "60000").exit_code == 0
    build(data_dir)
    got = features(data_dir)
    ticks = ParquetLog(data_dir, "ticks").read_all()
    signed = pl.col("qty").filter(pl.col("side") == "buy").sum()
    expected = (
        ticks.sort("symbol", "ts", "offset")
        .with_columns(bucket=pl.col("ts").dt.truncate("1m"))
        .group_by("symbol", "bucket", maintain_order=True)
        .agg(
            open=pl.col("price").first(),
            high=pl.col("price").max(),
            low=pl.col("price").min(),
            close=pl.col("price").last(),
            volume=pl.col("qty").sum(),
            n_trades=pl.len().cast(pl.Int64),
            vwap=(pl.col("price") * pl.col("qty")).sum() / pl.col("qty").sum(),
            buy_volume=signed,
        )
        .rename({"bucket": "ts"})
    )
    # every bar but each symbol's last (still open: no tick after its end yet)
    expected = expected.join(expected.group_by("symbol").agg(last=pl.col("ts").max()), on="symbol")
    expected = expected.filter(pl.col("ts") < pl.col("last")).drop("last").sort("symbol", "ts")
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume", "n_trades", "vwap", "buy_volume"]
    assert_frame_equal(got.select(cols), expected.select(cols), check_exact=False, rel_tol=1e-9)
    assert got.height > 100


def test_edge_cases_one_tick_bars_gaps_equal_timestamps_out_of_order(data_dir):
    write_ticks(
        data_dir,
        [
            [(5, 100, 1, "buy")],  # bar 0: one tick
            [(61, 101, 1, "sell"), (61, 102, 2, "buy"), (61, 99, 1, "sell")],  # bar 1: equal timestamps
            [(130, 103, 1, "buy"), (125, 104, 1, None)],  # bar 2: out of order within a flush
            [(305, 110, 3, "sell")],  # bars 3, 4 empty; bar 5 opens
            [(400, 111, 1, "buy")],  # closes bar 5
        ],
    )
    build(data_dir)
    f = features(data_dir)
    assert [(t.timestamp() - T0) for t in f["ts"].to_list()] == [0, 60, 120, 180, 240, 300]
    rows = f.select("open", "high", "low", "close", "volume", "n_trades", "vwap", "buy_volume", "sell_volume").rows()
    assert rows[0] == (100, 100, 100, 100, 1, 1, 100, 1, 0)
    # equal timestamps: open and close follow arrival order
    assert rows[1][:6] == (101, 102, 99, 99, 4, 3)
    assert rows[1][6] == pytest.approx((101 + 204 + 99) / 4)
    # out of order in one flush: open is the earliest trade (125 s), close the latest (130 s)
    assert rows[2][:4] == (104, 104, 103, 103)
    assert rows[2][7:] == (1, 0)  # the side-less trade counts in neither side
    # empty bars carry the last close forward with zero volume
    assert rows[3] == rows[4] == (103, 103, 103, 103, 0, 0, 103, 0, 0)
    assert rows[5][:6] == (110, 110, 110, 110, 3, 1)
    assert f["ofi"].to_list()[3] == 0.0 and f["r_1"].to_list()[3] == 0.0


def test_a_tick_for_a_closed_bar_is_counted_late_not_merged(data_dir):
    write_ticks(data_dir, [[(10, 100, 1, "buy"), (70, 101, 1, "buy")]])
    build(data_dir)
    write_ticks(data_dir, [[(20, 500, 9, "buy"), (75, 102, 1, "sell"), (130, 103, 1, "buy")]])
    with FeatureBuilder(data_dir, FeatureSpec()) as b:
        rep = b.build()
        assert rep.late == 1 and b.state["X"].late == 1
    f = features(data_dir)
    assert f["close"].to_list() == [100, 102]  # bar 0 unchanged by the late tick; bar 1 got 75 s
    assert f["volume"].to_list() == [1, 2]


def test_late_ticks_are_reported_per_symbol_with_what_to_do(rtml, data_dir):
    from rtml_cli import ui

    write_ticks(data_dir, [[(10, 100, 1, "buy"), (70, 101, 1, "buy")]])
    write_ticks(data_dir, [[(10, 100, 1, "buy"), (70, 101, 1, "buy")]], symbol="Y")
    build(data_dir)
    write_ticks(data_dir, [[(20, 500, 9, "buy"), (21, 500, 9, "buy"), (130, 103, 1, "buy")]])
    write_ticks(data_dir, [[(130, 103, 1, "buy")]], symbol="Y")
    with FeatureBuilder(data_dir, FeatureSpec()) as b:
        rep = b.build()
        line = ui.features_status(b, rep, 0.0)
        view = render_text(ui.features_view(b, rep, 0.0), width=80)
    assert "late ticks: X 2 (raise --grace" in line and "Y" not in line.split("late ticks:")[1].split("(")[0]
    assert "-" not in line.split("open bar:")[-1]  # never a negative age
    rows = {cells[0]: cells for cells in table_rows(view)}
    assert rows["X"][3] == "2" and rows["Y"][3] == "0"  # late ticks, per symbol
    assert "late ticks: X 2" in " ".join(view.split()) and "…" not in view
    write_ticks(data_dir, [[(40, 500, 9, "buy")]])
    out = rtml("features").output.replace("\n", " ")
    assert "1 ticks arrived after their bar had closed" in out and "raise --grace" in out


def test_a_tick_late_in_arrival_order_within_one_flush_is_late_too(data_dir):
    # 10 s arrives after 70 s has closed bar 0: late even though both come in the same flush,
    # so the result does not depend on how ticks were grouped into flushes or steps.
    write_ticks(data_dir, [[(5, 100, 1, "buy"), (70, 101, 1, "buy"), (10, 999, 1, "buy"), (130, 1, 1, "buy")]])
    assert build(data_dir).late == 1
    assert features(data_dir)["close"].to_list() == [100, 101]


# -- incremental = one-shot; no look-ahead ----------------------------------------------------------


@pytest.mark.slow
def test_many_small_steps_give_exactly_the_rows_of_one_build(rtml, tmp_path):
    src = tmp_path / "one"
    assert rtml("ingest", "--max-ticks", "40000", "--data-dir", str(src), data=False).exit_code == 0
    build(src)
    small = tmp_path / "small"
    # the same ticks, and a build after every few hundred of them
    copy_ticks(src, small)
    build(small, chunk=997)
    for name in ("features", "examples"):
        assert_same(features(small, name), features(src, name))
    assert features(src).height > 100


@pytest.mark.slow
def test_building_after_every_ingest_run_equals_one_build(rtml, tmp_path):
    inc, full = tmp_path / "inc", tmp_path / "full"
    for _ in range(4):
        assert (
            rtml("ingest", "--max-ticks", "9000", "--flush-every", "2500", "--data-dir", str(inc), data=False).exit_code
            == 0
        )
        build(inc)
    copy_ticks(inc, full)
    build(full)
    for name in ("features", "examples"):
        assert_same(features(inc, name), features(full, name))


@pytest.mark.slow
@pytest.mark.parametrize("cut_minutes", [17.5, 41.25])
def test_no_feature_depends_on_a_tick_after_its_bar(rtml, tmp_path, cut_minutes):
    full = tmp_path / "full"
    assert rtml("ingest", "--max-ticks", "60000", "--data-dir", str(full), data=False).exit_code == 0
    build(full)
    cut = pl.lit(T0 * 10**9 + int(cut_minutes * 60e9)).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    trunc = tmp_path / "trunc"
    copy_ticks(full, trunc, pl.col("ts") < cut)
    build(trunc)
    before = features(trunc)
    after = features(full).filter(pl.col("ts") < before["ts"].max() + pl.duration(seconds=1))
    assert before.height > 30
    assert_same(before, after.join(before.select("symbol", "ts"), on=["symbol", "ts"], how="semi"))
    # and the truncated build emitted only bars that had ended before the cut
    assert before.select((pl.col("ts") + pl.duration(minutes=1) <= cut).all()).item()


# -- examples ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("target", ["logret", "sign"])
def test_examples_carry_the_target_h_bars_ahead(rtml, data_dir, target):
    assert rtml("ingest", "--max-ticks", "30000").exit_code == 0
    build(data_dir, FeatureSpec(horizon=3, target=target))
    f, e = features(data_dir), features(data_dir, "examples")
    for sym in f["symbol"].unique():
        fs, es = f.filter(pl.col("symbol") == sym), e.filter(pl.col("symbol") == sym)
        assert es.height == fs.height - 3
        assert_same(es.drop("target"), fs.head(es.height))  # example k is features row k
        closes = fs["close"].to_list()
        expected = [math.log(closes[k + 3] / closes[k]) for k in range(es.height)]
        if target == "sign":
            expected = [float((x > 0) - (x < 0)) for x in expected]
        assert es["target"].to_list() == pytest.approx(expected, rel=1e-12)


# -- exactly-once after a crash ------------------------------------------------------------------


class Crash(BaseException):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before_publish", "after_publish", "before_examples"])
def test_a_crash_mid_step_neither_duplicates_nor_skips_a_bar(rtml, tmp_path, monkeypatch, when):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    for d in (ref, crashed):
        assert rtml("ingest", "--max-ticks", "30000", "--data-dir", str(d), data=False).exit_code == 0
    build(ref)
    from rtml_cli import log as log_module

    real_append = log_module.LogWriter.append
    calls = {"n": 0}

    def crashing_append(self, symbol, frame):
        if self.log.name == ("examples" if when == "before_examples" else "features"):
            calls["n"] += 1
            if calls["n"] == 3:  # the third part of that log
                if when == "after_publish":
                    real_append(self, symbol, frame)
                raise Crash()
        return real_append(self, symbol, frame)

    monkeypatch.setattr(log_module.LogWriter, "append", crashing_append)
    with pytest.raises(Crash):
        build(crashed, chunk=3000)
    monkeypatch.setattr(log_module.LogWriter, "append", real_append)
    if when != "before_examples":
        assert json.loads((crashed / STATE_FILE).read_text())["pending"]  # the intent was left behind
    build(crashed, chunk=3000)
    for name in ("features", "examples"):
        assert_same(features(crashed, name), features(ref, name))


@pytest.mark.slow
def test_a_one_shot_build_stops_after_the_step_in_progress_and_the_next_run_goes_on(rtml, data_dir, tmp_path):
    """Ctrl-C or SIGTERM during `rtml features` (no --follow) used to be printed and ignored:
    the build now ends after the step in progress, committed, and the next run finishes the
    same rows as one uninterrupted build."""
    from threading import Event

    assert rtml("ingest", "--max-ticks", "90000", "--json").exit_code == 0
    stop, steps = Event(), []

    def on_progress(rep):
        steps.append(rep.ticks)
        stop.set()  # as the signal handler does

    with FeatureBuilder(data_dir, FeatureSpec(), chunk_ticks=5_000) as b:
        b.build(on_progress, stop)
        left = b.backlog()
    assert len(steps) == 1 and left > 50_000
    build(data_dir, chunk=5_000)
    whole = tmp_path / "whole"
    copy_ticks(data_dir, whole)
    build(whole)
    assert_same(features(data_dir), features(whole))
    assert_same(features(data_dir, "examples"), features(whole, "examples"))


@pytest.mark.slow
def test_kill_9_of_features_follow_while_ticks_arrive_then_restart_gives_the_one_shot_result(rtml, tmp_path):
    live, ref = tmp_path / "live", tmp_path / "ref"
    ingest = rtml_process(
        [
            "ingest",
            "--speed",
            "3000",
            "--flush-interval",
            "0.1",
            "--max-ticks",
            "60000",
            "--json",
            "--data-dir",
            str(live),
        ]
    )
    try:
        for _ in range(3):
            feats = rtml_process(["features", "--follow", "--poll", "0.05", "--json", "--data-dir", str(live)])
            time.sleep(1.0)
            feats.send_signal(signal.SIGKILL)
            feats.wait(30)
        assert ingest.wait(120) == 0
    finally:
        ingest.kill()
    r = rtml("features", "--json", "--data-dir", str(live), data=False)
    assert r.exit_code == 0, r.output
    copy_ticks(live, ref)
    build(ref)
    for name in ("features", "examples"):
        assert_same(features(live, name), features(ref, name))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["parquet", "kafka"])
def test_kill_9_of_ingest_and_features_with_the_default_grace_gives_the_one_shot_result(
    rtml, tmp_path, backend, request
):
    """Chaos with the default --grace: ingest killed twice and down for longer than the grace
    each time, the follower killed once. The market clock used to run on through an outage
    and close bars whose ticks ingest wrote when it was back (late ticks, bars unlike a
    rebuild's); ingest's heartbeat now stops the clock while it is down. 1 s bars, so that a
    few seconds of outage cross bar ends. On Kafka the builder has a data directory of its
    own, as on another machine: the beats reach it through the broker."""
    from rtml_cli.logs import LogStore

    live, ref = tmp_path / "live", tmp_path / "ref"
    url = request.getfixturevalue("kafka_url") if backend == "kafka" else None
    on = ["--log", url] if url else []
    builder = tmp_path / "builder" if url else live
    ingest = ["ingest", "--speed", "50", "--flush-interval", "0.1", "--json", "--data-dir", str(live), *on]
    follow = ["features", "--follow", "--bar", "1s", "--poll", "0.05", "--json", "--data-dir", str(builder), *on]
    ticks = LogStore(live, url).open("ticks")
    feats = None
    sizes = []
    try:
        for kill_features in (False, True):
            run = rtml_process(ingest)
            feats = feats or rtml_process(follow)
            # two seconds of writing, counted from its first flush (starting takes seconds on a
            # loaded machine: a fixed sleep killed it before it had written anything)
            before = sizes[-1] if sizes else 0
            deadline = time.monotonic() + 60
            while ticks.read_all(columns=["offset"]).height == before:
                assert time.monotonic() < deadline, "ingest wrote nothing in 60 s"
                time.sleep(0.1)
            time.sleep(2.0)
            run.send_signal(signal.SIGKILL)
            run.wait(30)
            sizes.append(ticks.read_all(columns=["offset"]).height)
            if kill_features:
                feats.send_signal(signal.SIGKILL)
                feats.wait(30)
                feats = rtml_process(follow)
            time.sleep(4.0)  # ingest down for twice the grace
        run = rtml_process([*ingest, "--duration", "1.5"])
        assert run.wait(60) == 0, run.stderr.read()
    finally:
        if feats is not None:
            stop_processes(feats)
    assert 0 < sizes[0] < sizes[1], sizes  # each run wrote
    assert sum(s["late"] for s in json.loads((builder / STATE_FILE).read_text())["symbols"].values()) == 0
    r = rtml("features", "--bar", "1s", "--json", "--data-dir", str(builder), *on, data=False)
    assert r.exit_code == 0, r.output
    store = LogStore(builder, url)
    copy_ticks(live, ref, logs=store)
    build(ref, FeatureSpec(bar_s=1))
    for name in ("features", "examples"):
        assert_same(features(builder, name, store), features(ref, name))


# -- the SQL contract ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "sql, fragment",
    [
        ("SELECT symbol, ts, close FROM bars", "lacks open"),
        ("SELECT *, 1 AS target FROM bars", "may not return target"),
        ("SELECT * FROM bars WHERE n_trades > 0 LIMIT 3", "rows for"),
        ("SELECT *, 'x' AS word FROM bars", "not numeric"),
        ("SELECT * FROM bars", "no feature columns"),
        ("SELEKT 1", "does not parse"),
        ("CREATE TABLE t AS SELECT 1", "not a CREATE statement"),
        ("SELECT *, r AS x FROM bars; SELECT 1", "exactly one SELECT statement; it has 2"),
        ("INSTALL httpfs", "not a"),
        ("SELECT b.*, 1.0 AS x FROM bars b, read_csv('/etc/passwd') p LIMIT 0", "Permission"),
    ],
)
def test_a_feature_query_that_breaks_the_contract_is_a_clear_error(rtml, data_dir, tmp_path, sql, fragment):
    write_ticks(data_dir, [[(t, 100 + t, 1, "buy") for t in range(0, 600, 7)]])
    q = tmp_path / "f.sql"
    q.write_text(sql)
    assert_clean_error(rtml("features", "--sql", str(q)), fragment)


def test_a_feature_query_cannot_write_files_or_run_a_second_statement(rtml, data_dir, tmp_path):
    """`--sql` used to run every statement in the file with DuckDB's full powers."""
    write_ticks(data_dir, [[(t, 100 + t, 1, "buy") for t in range(0, 600, 7)]])
    leak = tmp_path / "leak.csv"
    q = tmp_path / "f.sql"
    for sql in (
        f"COPY (SELECT 1) TO '{leak}'",
        f"SELECT *, 1.0 AS x FROM bars; COPY (SELECT 1) TO '{leak}'",
        f"SELECT b.*, 1.0 AS x FROM bars b WHERE (SELECT count(*) FROM read_csv('{q}')) >= 0",
    ):
        q.write_text(sql)
        assert_clean_error(rtml("features", "--sql", str(q)))
        assert not leak.exists()
    assert not (data_dir / "features").exists() or ParquetLog(data_dir, "features").read_all().height == 0


def test_a_custom_feature_query_replaces_the_default(rtml, data_dir, tmp_path):
    write_ticks(data_dir, [[(t, 100 + t, 1, "buy") for t in range(0, 600, 7)]])
    q = tmp_path / "f.sql"
    q.write_text("SELECT *, close - open AS body, n_trades * 2 AS twice FROM bars")
    r = rtml("features", "--sql", str(q), "--json")
    assert r.exit_code == 0, r.output
    f = features(data_dir)
    assert f.columns[-2:] == ["body", "twice"] and "r_1" not in f.columns
    assert f["body"].to_list() == [c - o for c, o in zip(f["close"], f["open"], strict=True)]


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_changed_settings_are_refused_until_rebuild(rtml, data_dir):
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(0, 900, 5)]])
    assert rtml("features").exit_code == 0
    assert_clean_error(rtml("features", "--horizon", "7"), "horizon 5 -> 7", "--rebuild")
    r = rtml("features", "--horizon", "7", "--rebuild", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"]["horizon"] == 7
    assert features(data_dir, "examples").height == features(data_dir).height - 7


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--bar", "90x"], "is not a duration"),
        (["--bar", "2d"], "outside 1s..1d"),
    ],
)
def test_bad_bar_values(rtml, data_dir, args, fragment):
    write_ticks(data_dir, [[(1, 100, 1, "buy")]])
    assert_clean_error(rtml("features", *args), fragment, code=2)


def test_features_without_ticks_says_to_ingest_first(rtml):
    assert_clean_error(rtml("features"), "no ticks log", "rtml ingest")


def test_second_bar_sizes_and_json_summary(rtml, data_dir):
    write_ticks(data_dir, [[(t * 0.5, 100 + (t % 7), 1, "sell") for t in range(240)]])  # 2 minutes
    r = rtml("features", "--bar", "10s", "--horizon", "2", "--json")
    assert r.exit_code == 0
    s = json.loads(r.stdout)
    assert s["params"]["bar_s"] == 10
    assert s["symbols"]["X"]["features_rows"] == 11 and s["symbols"]["X"]["examples_rows"] == 9
    assert s["symbols"]["X"]["closed_until"] == "2026-01-01T00:01:50+00:00"


@pytest.mark.slow
def test_the_machine_time_zone_changes_nothing(rtml, tmp_path):
    utc, ny = tmp_path / "utc", tmp_path / "ny"
    for d, tz in ((utc, "UTC"), (ny, "America/New_York")):
        write_ticks(d, [[(t, 100 + t % 5, 1, "buy") for t in range(0, 3 * 3600, 9)]])
        p = rtml_process(["features", "--json", "--data-dir", str(d)], env={"TZ": tz})
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert_same(features(utc), features(ny))


@pytest.mark.slow
def test_follow_closes_an_idle_symbols_bars_on_the_market_clock_and_stops_on_sigterm(data_dir):
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(0, 125, 5)]], symbol="LIQUID")
    write_ticks(data_dir, [[(3, 50, 1, "buy")]], symbol="IDLE")
    proc = rtml_process(
        ["features", "--follow", "--grace", "0", "--poll", "0.05", "--json", "--data-dir", str(data_dir)]
    )
    try:
        deadline = time.monotonic() + 60
        while ParquetLog(data_dir, "features").row_count("IDLE") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        write_ticks(data_dir, [[(t, 101, 1, "sell") for t in range(125, 200, 5)]], symbol="LIQUID")
        while ParquetLog(data_dir, "features").row_count("LIQUID") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    idle = features(data_dir).filter(pl.col("symbol") == "IDLE")
    # IDLE has one trade, yet its bars close as the market clock moves on: the first holds the
    # trade, the ones after carry its price with no volume
    assert idle["close"].to_list()[:2] == [50, 50] and idle["volume"].to_list()[:2] == [1, 0]
    assert summary["symbols"]["LIQUID"]["features_rows"] >= 3


# -- gaps ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_gap_of_years_makes_a_gap_in_the_bars_not_millions_of_them(rtml, data_dir, tmp_path):
    """One trade stamped three years later used to make 1.6 million empty bars (1.8 GB); after
    a bar with trades, empty bars now run for at most MAX_EMPTY_SECONDS, the rest are counted,
    and an incremental build gives the same rows as a one-shot one."""
    from rtml_cli.features import MAX_EMPTY_SECONDS

    years = 3 * 365 * 86_400
    before = [(t, 100 + t % 7, 1, "buy") for t in range(0, 3_000, 13)]
    after = [(years + t, 90 + t % 5, 1, "sell") for t in range(0, 3_000, 11)]
    write_ticks(data_dir, [before, after[:1], after[1:]])
    r = rtml("features", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    bars = features(data_dir)
    cap = MAX_EMPTY_SECONDS // 60
    closed_until = datetime.fromisoformat(summary["symbols"]["X"]["closed_until"]).timestamp()
    dense = round(closed_until - T0) // 60  # every minute from the first trade's bar to the last closed one
    assert bars.height + summary["gap_bars_skipped"] == dense  # each one either emitted or counted
    assert summary["gap_bars_skipped"] == summary["symbols"]["X"]["gap_bars_skipped_total"] > dense - cap - 200
    gap = bars.filter(pl.col("ts").diff() > pl.duration(minutes=1))
    assert gap.height == 1  # one jump, from the last empty bar to the first bar after the gap
    empties_after = bars.filter(
        (pl.col("ts") >= pl.lit(T0 * 10**9).cast(pl.Datetime("ns", "UTC")) + pl.duration(seconds=3_000))
        & (pl.col("ts") < gap["ts"][0])
    )
    assert empties_after.height == cap and (empties_after["n_trades"] == 0).all()
    step = tmp_path / "step"  # tick by tick, as a live run would
    for batch in ([before], [after[:1]], [after[1:]]):
        write_ticks(step, batch)
        build(step)
    assert_same(features(step), bars)


@pytest.mark.slow
@pytest.mark.parametrize("bar", ["1s", "2s", "10s"])
def test_bars_of_any_length_are_built_whole(rtml, data_dir, bar):
    """Short bars make the empty-bar cap a large count (7 days of 1 s bars): it once overflowed
    a 32-bit multiplication in DuckDB and stopped every `--bar 2s` build."""
    assert rtml("ingest", "--max-ticks", "20000", "--json").exit_code == 0
    r = rtml("features", "--bar", bar, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["gap_bars_skipped"] == 0 and s["bars_emitted"] > 0
    bars = features(data_dir)
    seconds = {"1s": 1, "2s": 2, "10s": 10}[bar]
    for _, part in bars.group_by("symbol"):  # every bar from the first to the last: none missing
        span = (part["ts"].max() - part["ts"].min()).total_seconds()
        assert part.height == span // seconds + 1


@pytest.mark.slow
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


def test_a_broken_query_with_rebuild_costs_nothing(rtml, examples_dir, tmp_path):
    """`--sql FILE --rebuild` used to delete the features and examples before it found that
    the query was broken, stranding the models trained on them."""
    before = {name: features(examples_dir, name) for name in ("features", "examples")}
    state = (examples_dir / STATE_FILE).read_text()
    q = tmp_path / "typo.sql"
    for sql in ("SELECT *, lag(close) OVER (ORDER BY ts) AS prev FROM barz", "SELECT *, 1 AS target FROM bars"):
        q.write_text(sql)
        assert_clean_error(rtml("features", "--sql", str(q), "--rebuild"), "the feature query")
    for name, frame in before.items():
        assert_same(features(examples_dir, name), frame)
    assert (examples_dir / STATE_FILE).read_text() == state


def _beat(data_dir: Path, watermark_s: float) -> None:
    """Ingest's heartbeat as a running ingest writes it, its last complete flush ending at
    `watermark_s` seconds after T0."""
    from rtml_cli import atomic
    from rtml_cli.beat import BEAT_FILE

    log = ParquetLog(data_dir, "ticks")
    now = time.time()
    atomic.write_json(
        data_dir / BEAT_FILE,
        {
            "pid": 1,
            "started": now - 60,
            "beat": now + 3600,
            "running": True,
            "offsets": {s: log.last_offset(s) for s in log.partitions()},
            "watermark": int((T0 + watermark_s) * 1e9),
        },
    )


def _follow_briefly(data_dir: Path, seconds: float = 1.0) -> FeatureBuilder:
    import threading

    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    with FeatureBuilder(data_dir, FeatureSpec()) as b:
        for _ in b.follow(stop, poll=0.02, grace=0.0):
            pass
    return b


@pytest.mark.slow
@pytest.mark.parametrize("complete", [False, True])
def test_the_clock_waits_until_a_flush_is_published_whole(data_dir, complete):
    """Ingest publishes a flush one symbol after the other. The market clock used to take the
    newest tick of the first symbol published and close the other symbols' bars before their
    part of the same flush appeared, making its ticks late (found by rtml run's chaos test)."""
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(0, 100, 5)]], symbol="A")
    write_ticks(data_dir, [[(t, 50, 1, "buy") for t in range(0, 100, 5)]], symbol="B")
    _beat(data_dir, 95)
    _follow_briefly(data_dir)
    # the next flush: A's part is published, B's is not yet
    write_ticks(data_dir, [[(t, 100, 1, "buy") for t in range(100, 400, 5)]], symbol="A")
    _beat(data_dir, 395 if complete else 95)  # (True: what the clock believed before: a control)
    _follow_briefly(data_dir)
    write_ticks(data_dir, [[(t, 50, 1, "buy") for t in range(100, 400, 5)]], symbol="B")
    _beat(data_dir, 395)
    b = _follow_briefly(data_dir)
    if complete:  # a clock that trusts a half-published flush makes B's ticks late: the check can fail
        assert b.state["B"].late > 0
    else:
        assert b.state["B"].late == 0
        ref = data_dir.parent / "ref"
        copy_ticks(data_dir, ref)
        build(ref)
        assert_same(features(data_dir), features(ref))


@pytest.mark.slow
def test_a_pause_in_a_paced_replay_makes_no_tick_late(rtml, tmp_path):
    """While pacing waited for the next trade, ingest could not flush what it held, and the
    features clock ran on past those ticks and closed their bars: they were written late.
    (Found by a review: an export replayed at --speed 1 with an 8 s pause.)"""
    d = tmp_path / "data"
    times = [0.2 * i for i in range(8)] + [9.5 + 0.2 * i for i in range(5)]
    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    export = pl.DataFrame(
        {
            "ts": [int((t0 + t) * 1e6) for t in times],
            "recv_ts": [int((t0 + t) * 1e6) for t in times],
            "symbol": ["XRP/USD"] * len(times),
            "price": [100.0 + i for i in range(len(times))],
            "qty": [1.0] * len(times),
            "side": ["buy"] * len(times),
            "trade_id": [str(i) for i in range(len(times))],
        }
    ).with_columns(pl.col("ts", "recv_ts").cast(pl.Datetime("us", "UTC")))
    path = tmp_path / "export.csv"
    export.write_csv(path)
    assert rtml("ingest", "--max-ticks", "1", "--data-dir", str(d), data=False).exit_code == 0  # a ticks log to follow
    feats = rtml_process(["features", "--follow", "--bar", "1s", "--poll", "0.05", "--json", "--data-dir", str(d)])
    try:
        r = rtml("ingest", "--source", "replay", "--path", str(path), "--speed", "1", "--data-dir", str(d), data=False)
        assert r.exit_code == 0, r.output
        time.sleep(1.5)
    finally:
        stop_processes(feats)
    state = json.loads((d / STATE_FILE).read_text())
    assert state["symbols"]["XRP/USD"]["late"] == 0
