"""The Kafka log against a real broker (Tansu, started by the fixtures): the same interface and
guarantees as the Parquet log, rows that survive the trip exactly, atomic batches without
transactions, and clear errors for what is not an rtml row."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import polars as pl
import pytest
from confluent_kafka import Producer
from polars.testing import assert_frame_equal

from rtml_cli.errors import ConfigError, LogError
from rtml_cli.kafka import BATCH_HEADER, SCHEMA_HEADER, encode, murmur2, parse_url, partition_of
from rtml_cli.log import ParquetLog
from rtml_cli.logs import LogStore
from tests.conftest import assert_clean_error, rtml_process


def _store(tmp_path, url: str) -> LogStore:
    return LogStore(tmp_path / "state", url)


def _producer(url: str) -> Producer:
    return Producer({"bootstrap.servers": parse_url(url).brokers, "enable.idempotence": True})


def _topic(url: str, name: str) -> str:
    return parse_url(url).prefix + name


def messy(n: int = 40, seed: int = 3) -> pl.DataFrame:
    """Rows with what JSON loses unless it is careful: NaN and infinities, nulls, the smallest
    and largest floats, -0.0, ns-precision times, quotes, newlines and non-ASCII text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    floats = list(rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n))
    floats = [math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, -0.0, 0.1 + 0.2, *floats[7:]][:n]
    base = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000
    return pl.DataFrame(
        {
            "ts": pl.Series([base + i * 1_000_000_007 + 1 for i in range(n)]).cast(pl.Datetime("ns")),
            "x": pl.Series(floats, dtype=pl.Float64),
            "y": pl.Series([None if i % 5 == 0 else float(i) / 3 for i in range(n)], dtype=pl.Float64),
            "n": pl.Series([2**63 - 1 - i if i % 2 else -(2**62) + i for i in range(n)], dtype=pl.Int64),
            "side": pl.Series([None if i % 3 == 0 else 'b"u\\y\n€' for i in range(n)], dtype=pl.String),
            "flag": pl.Series([None if i % 4 == 0 else i % 2 == 0 for i in range(n)], dtype=pl.Boolean),
        }
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


def test_murmur2_puts_a_symbol_where_kafka_s_default_partitioner_does(kafka_url):
    """Any Kafka producer keying by symbol (Java's default partitioner; librdkafka's
    murmur2_random) lands a symbol in the partition rtml reads it from."""
    from confluent_kafka.admin import AdminClient, NewTopic

    brokers, topic = parse_url(kafka_url).brokers, _topic(kafka_url, "hash")
    admin = AdminClient({"bootstrap.servers": brokers})
    for fut in admin.create_topics([NewTopic(topic, 7, 1)]).values():
        fut.result()
    producer = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random"})
    symbols = ["BTC/USD", "ETH/USD", "SOL/USD", "XBTUSDT", "a", "ab", "abc", "abcd", "€uro", "x" * 64]
    landed: dict[str, int] = {}
    for s in symbols:
        producer.produce(topic, b"{}", s.encode(), on_delivery=lambda err, m, s=s: landed.update({s: m.partition()}))
    producer.flush(10)
    assert landed == {s: partition_of(s, 7) for s in symbols}
    # Kafka's own test vector (org.apache.kafka.common.utils.UtilsTest): murmur2("21") = -973932308
    assert murmur2(b"21") - (1 << 32) == -973932308


def test_rows_come_back_exactly_nan_infinities_nulls_and_nanoseconds_too(tmp_path, kafka_url):
    frame = messy()
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        assert w.append("BTC/USD", frame) == (0, frame.height - 1)
        # a user's feature query may return narrower integers: they travel as int64
        w.append("ETH/USD", pl.DataFrame({"small": pl.Series([-128, 0, 127], dtype=pl.Int8)}))
    reader = _store(tmp_path / "other", kafka_url).open("ticks")  # a fresh reader
    back = reader.read_after("BTC/USD")
    assert_frame_equal(back.drop("offset"), frame)
    assert reader.read_after("ETH/USD")["small"].to_list() == [-128, 0, 127]
    assert back["x"].is_nan().sum() == 1 and back["x"].is_infinite().sum() == 2
    assert math.copysign(1.0, back["x"][5]) == -1.0  # -0.0 kept its sign


def test_the_message_format_is_plain_json_any_consumer_can_read(tmp_path, kafka_url):
    """What the README documents: key = symbol, one JSON object per row, times in integer ns."""
    from confluent_kafka import Consumer, TopicPartition

    frame = messy(8)
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        w.append("ETH/USD", frame)
    c = Consumer({"bootstrap.servers": parse_url(kafka_url).brokers, "group.id": "x"})
    p = partition_of("ETH/USD", 4)
    c.assign([TopicPartition(_topic(kafka_url, "ticks"), p, 0)])
    got = []
    while len(got) < 5:
        got += [m for m in c.consume(10, 5) if m.error() is None]
    c.close()
    first = got[0]
    assert first.key() == b"ETH/USD"
    headers = dict(first.headers())
    batch_writer, first_offset, last_offset = headers[BATCH_HEADER].decode().split(":")
    assert (first_offset, last_offset) == ("0", "7") and batch_writer
    schema = json.loads(headers[SCHEMA_HEADER])
    assert dict(map(tuple, schema["columns"]))["ts"] == "timestamp[ns, UTC]" and schema["text"] == ["x"]
    row = json.loads(first.value())
    assert row["offset"] == 0 and row["ts"] == frame["ts"].dt.epoch("ns")[0] and row["x"] == "NaN"
    assert json.loads(got[1].value())["x"] == "Infinity"
    assert SCHEMA_HEADER not in dict(got[1].headers())  # the schema rides on a batch's first message


def test_the_kafka_log_answers_as_the_parquet_log_does(tmp_path, kafka_url):
    """The same appends to both backends: the same partitions, offsets, reads after an offset
    with bounds and columns, reads in time order in chunks, tails and columns."""
    parquet = ParquetLog(tmp_path / "p", "features")
    kafka = _store(tmp_path, kafka_url).open("features")
    frame = messy(30).drop("x")
    with parquet.writer() as pw, kafka.writer() as kw:
        for i, sym in enumerate(["BTC/USD", "ETH/USD", "SOL/USD", "BTC/USD", "ETH/USD", "BTC/USD"]):
            part = frame.slice(i * 4, 7).with_columns(symbol=pl.lit(sym))
            assert pw.append(sym, part) == kw.append(sym, part)
    fresh = _store(tmp_path / "fresh", kafka_url).open("features")
    for log in (kafka, fresh):
        assert log.partitions() == parquet.partitions()
        for sym in parquet.partitions():
            assert log.last_offset(sym) == parquet.last_offset(sym)
            assert_frame_equal(log.tail(sym), parquet.tail(sym))
            assert log.columns(sym) == parquet.columns(sym)
            for after, upto in [(-1, None), (3, None), (6, 9), (8, 8), (20, None)]:
                assert_frame_equal(log.read_after(sym, after, upto=upto), parquet.read_after(sym, after, upto=upto))
            cols = [pl.col("offset"), pl.col("n") * 2]
            assert_frame_equal(log.read_after(sym, 2, cols), parquet.read_after(sym, 2, cols))
        offsets = {"BTC/USD": 3}
        for chunk in (2, 5, 100):
            assert_frame_equal(
                log.read_in_time_order(parquet.partitions(), offsets, chunk),
                parquet.read_in_time_order(parquet.partitions(), offsets, chunk),
            )
        assert_frame_equal(log.read_all().sort("symbol", "offset"), parquet.read_all().sort("symbol", "offset"))


def _half_a_batch(url: str, symbol: str, first: int, rows: pl.DataFrame, sent: int) -> None:
    """What a writer killed halfway through an append leaves: `sent` of the batch's messages."""
    frame = rows.select(pl.int_range(first, first + rows.height, dtype=pl.Int64).alias("offset"), pl.all())
    values, schema = encode(frame)
    batch = (BATCH_HEADER, f"deadwriter:{first}:{first + rows.height - 1}".encode())
    p = _producer(url)
    for i, v in enumerate(values[:sent]):
        headers = [batch, (SCHEMA_HEADER, schema)] if i == 0 else [batch]
        p.produce(_topic(url, "ticks"), v, symbol.encode(), partition=partition_of(symbol, 4), headers=headers)
    p.flush(10)


def test_a_batch_cut_short_by_a_killed_writer_is_never_read_and_its_offsets_are_written_again(tmp_path, kafka_url):
    frame = messy(10)
    log = _store(tmp_path, kafka_url).open("ticks")
    with log.writer() as w:
        w.append("BTC/USD", frame.head(4))
    _half_a_batch(kafka_url, "BTC/USD", 4, frame.slice(4, 6), sent=3)
    reader = _store(tmp_path / "r", kafka_url).open("ticks")
    assert reader.last_offset("BTC/USD") == 3  # the three messages of the cut batch do not count
    assert reader.read_after("BTC/USD")["offset"].to_list() == [0, 1, 2, 3]
    with _store(tmp_path / "w2", kafka_url).open("ticks").writer() as w:  # the restarted writer
        assert w.next_offset("BTC/USD") == 4
        assert w.append("BTC/USD", frame.slice(4, 6)) == (4, 9)
    again = _store(tmp_path / "r2", kafka_url).open("ticks")
    assert_frame_equal(again.read_after("BTC/USD").drop("offset"), frame)
    assert again.abandoned == 3
    reader.poll()  # a reader that was there all along agrees
    assert reader.last_offset("BTC/USD") == 9 and reader.abandoned == 3


def test_a_message_rtml_did_not_write_is_a_clear_error_not_a_skip(tmp_path, kafka_url):
    log = _store(tmp_path, kafka_url).open("ticks")
    with log.writer() as w:
        w.append("BTC/USD", messy(3))
    p = _producer(kafka_url)
    p.produce(_topic(kafka_url, "ticks"), b'{"price": 1}', b"BTC/USD", partition=partition_of("BTC/USD", 4))
    p.flush(10)
    with pytest.raises(LogError, match=r"Kafka offset 3 is not an rtml row"):
        _store(tmp_path / "r", kafka_url).open("ticks").partitions()


def test_a_batch_that_does_not_decode_is_a_clear_error(tmp_path, kafka_url):
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        w.append("ETH/USD", messy(3))
    schema = json.dumps({"columns": [["offset", "int64"], ["price", "float64"]]}).encode()
    batch = (BATCH_HEADER, b"other:3:4")
    p = _producer(kafka_url)
    topic, part = _topic(kafka_url, "ticks"), partition_of("ETH/USD", 4)
    p.produce(topic, b'{"offset":3,"price":1.5}', b"ETH/USD", partition=part, headers=[batch, (SCHEMA_HEADER, schema)])
    p.produce(topic, b'{"offset":4,"price":"cheap"', b"ETH/USD", partition=part, headers=[batch])
    p.flush(10)
    with pytest.raises(LogError, match=r"batch of 'ETH/USD'.*does not decode"):
        _store(tmp_path / "r", kafka_url).open("ticks").partitions()


@pytest.mark.parametrize(
    ("value", "headers", "says"),
    [
        (b'{"offset":3,"x":"oops"}', [(BATCH_HEADER, b"w:3:3")], "does not decode"),  # text where a float goes
        (None, [(BATCH_HEADER, b"w:3:3")], "no value"),  # a tombstone
        (b"{}", [(BATCH_HEADER, b"w:3:-5")], "is not an rtml row"),  # a batch that ends before it starts
        (b"{}", [(BATCH_HEADER, b"w:3:999999999999")], "is not an rtml row"),  # one that never ends
    ],
)
def test_bad_batches_are_errors_and_the_log_stays_broken_not_skipping_on(tmp_path, kafka_url, value, headers, says):
    """A reader that hit a bad message raises again on every later read (the dashboards read
    on after an error): going on would lose the messages fetched after it."""
    schema = json.dumps({"columns": [["offset", "int64"], ["x", "float64"]], "text": ["x"]}).encode()
    p = _producer(kafka_url)
    topic, part = _topic(kafka_url, "ticks"), partition_of("BTC/USD", 4)
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        w.append("BTC/USD", messy(3).select("ts", "x"))
    p.produce(topic, value, b"BTC/USD", partition=part, headers=[*headers, (SCHEMA_HEADER, schema)])
    p.flush(10)
    _half_a_batch(kafka_url, "ETH/USD", 0, messy(3).select("ts", "x"), sent=3)  # a good batch after it
    log = _store(tmp_path / "r", kafka_url).open("ticks")
    for _ in range(3):
        with pytest.raises(LogError, match=says):
            log.partitions()


def test_topics_with_another_partition_count_are_a_clear_error(tmp_path, kafka_url):
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        w.append("BTC/USD", messy(2))
    other = kafka_url.replace("partitions=4", "partitions=6")
    with pytest.raises(ConfigError, match="have 4 partitions, --log says partitions=6"):
        _store(tmp_path / "r", other).open("ticks").partitions()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("kafka://", "is not kafka://HOST:PORT"),
        ("kafka://localhost", "is not HOST:PORT"),
        ("kafka://h:1?partitions=0", "partitions must be a whole number"),
        ("kafka://h:1?prefix=a/b", "a topic prefix may hold"),
        ("kafka://h:1?colour=red", "unknown setting 'colour'"),
        ("s3://bucket", "give a directory or kafka://"),
    ],
)
def test_bad_log_urls_are_clear_errors(rtml, url, says):
    assert_clean_error(rtml("ingest", "--max-ticks", "10", "--log", url), says)


# -- the broker down ---------------------------------------------------------------------------------


def test_brokers_that_do_not_answer_are_waited_for_saying_so_until_duration(rtml):
    from tools.broker import free_port

    started = time.monotonic()
    r = rtml("ingest", "--speed", "10", "--duration", "3", "--log", f"kafka://127.0.0.1:{free_port()}?timeout=1")
    assert_clean_error(r, "does not answer", "gave up at --duration")
    said = " ".join(r.output.split())
    assert "waiting: Kafka at 127.0.0.1:" in said and "retrying every second" in said, said
    assert "KafkaError{" not in said  # the client's reason, not its repr
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_a_broker_that_comes_up_late_is_waited_for_then_used(tmp_path):
    from tools.broker import Broker

    broker = Broker()
    url = f"kafka://{broker.address}?partitions=2&timeout=5"
    d = tmp_path / "data"
    said = tmp_path / "stderr"
    with open(said, "w") as err_file:
        ingest = rtml_process(
            ["ingest", "--max-ticks", "2000", "--json", "--data-dir", str(d), "--log", url], stderr=err_file
        )
    try:
        deadline = time.monotonic() + 60
        while "retrying every second" not in " ".join(said.read_text().split()):
            assert time.monotonic() < deadline and ingest.poll() is None, said.read_text()
            time.sleep(0.1)
        time.sleep(1.5)  # a retry or two with nobody there
        broker.start()
        out, _ = ingest.communicate(timeout=60)
        err = said.read_text()
        assert ingest.returncode == 0, err
        assert "Kafka answers: starting" in err
        assert json.loads(out)["written"] == 2000
        assert sum(LogStore(d, url).open("ticks").last_offset(s) + 1 for s in ("BTC/USD", "ETH/USD", "SOL/USD")) == 2000
    finally:
        ingest.kill()
        broker.stop()


@pytest.mark.slow
def test_a_broker_gone_mid_run_ends_the_stages_with_a_clear_error(tmp_path):
    """The writer (ingest) and a follower (features) retry for the URL's timeout, then stop
    with an error that says so, not a traceback, and not a hang."""
    from tools.broker import Broker

    broker = Broker().start()
    url = f"kafka://{broker.address}?partitions=2&timeout=3"
    d = tmp_path / "data"
    on = ["--data-dir", str(d), "--log", url]
    ingest = rtml_process(["ingest", "--speed", "200", "--flush-interval", "0.2", *on])
    features = None
    try:
        ticks = LogStore(tmp_path / "reader", url).open("ticks")
        deadline = time.monotonic() + 30
        while not ticks.partitions() and time.monotonic() < deadline:
            time.sleep(0.2)
        features = rtml_process(["features", "--follow", "--poll", "0.2", *on])
        time.sleep(3)
        assert ingest.poll() is None and features.poll() is None
        broker.stop()
        for proc in (ingest, features):
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, err
            assert "Traceback" not in err and "Error: " in err, err
            assert "does not answer" in err or "did not take offsets" in err, err
    finally:
        for proc in (ingest, features):
            if proc is not None:
                proc.kill()
        broker.stop()


# -- the pipeline on Kafka, and its archive ----------------------------------------------------------


def _rtml(d, url, *args: str) -> dict:
    from click.testing import CliRunner

    from rtml_cli.cli import cli

    r = CliRunner().invoke(cli, [*args, "--json", "--data-dir", str(d), *(["--log", url] if url else [])])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _same_logs(a: LogStore, b: LogStore, names=("ticks", "features", "examples", "predictions")) -> None:
    for name in names:
        x, y = (s.open(name).read_all().sort("symbol", "offset") for s in (a, b))
        # when a row was received or predicted differs from run to run; the rest is exact
        varies = [c for c in ("recv_ts", "latency_ms") if c in x.columns]
        assert x.height > 0 and x.height == y.height, name
        assert_frame_equal(x.drop(varies), y.drop(varies), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.slow
def test_the_pipeline_on_kafka_writes_what_it_writes_on_parquet_and_archives_exactly_once(tmp_path, kafka_url):
    """ingest, features, train and predict on each backend, from the same simulated market;
    then `rtml archive` copies the topics into Parquet (a second run copies nothing, a run after
    more ticks only those), and `rtml backtest` reads the archive as it reads a Parquet log."""
    steps = [["ingest", "--max-ticks", "40000"], ["features"], ["train"], ["predict"]]
    for args in steps:
        _rtml(tmp_path / "parquet", None, *args)
        _rtml(tmp_path / "kafka", kafka_url, *args)
    kafka = LogStore(tmp_path / "kafka", kafka_url)
    _same_logs(LogStore(tmp_path / "parquet"), kafka)

    first = _rtml(tmp_path / "kafka", kafka_url, "archive")
    held = {n: kafka.open(n) for n in ("ticks", "features", "examples", "predictions")}
    assert first["logs"] == {n: {s: log.last_offset(s) + 1 for s in log.partitions()} for n, log in held.items()}
    assert first["rows"] == sum(log.last_offset(s) + 1 for log in held.values() for s in log.partitions())
    _same_logs(kafka, LogStore(tmp_path / "kafka"))  # the Parquet archive beside the stages' state
    assert _rtml(tmp_path / "kafka", kafka_url, "archive")["rows"] == 0
    _rtml(tmp_path / "kafka", kafka_url, "ingest", "--max-ticks", "500")
    again = _rtml(tmp_path / "kafka", kafka_url, "archive", "--name", "ticks")
    assert again["rows"] == 500
    _same_logs(LogStore(tmp_path / "kafka", kafka_url), LogStore(tmp_path / "kafka"), names=("ticks",))
    archived = _rtml(tmp_path / "kafka", None, "backtest", "--warmup", "50")
    live = _rtml(tmp_path / "kafka", kafka_url, "backtest", "--warmup", "50")
    assert archived["models"] == live["models"]


def test_an_archive_stopped_halfway_goes_on_where_it_stopped(tmp_path, kafka_url):
    from threading import Event

    from rtml_cli.archive import copy_log

    frame = messy(40)
    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        for sym in ("BTC/USD", "ETH/USD"):
            w.append(sym, frame)
    src, dst = _store(tmp_path, kafka_url).open("ticks"), ParquetLog(tmp_path / "history", "ticks")
    stop = Event()
    for n, _ in enumerate(copy_log(src, dst, chunk=7, stop=stop)):
        if n == 2:
            stop.set()  # after three batches of BTC/USD: 21 rows
    assert dst.last_offset("BTC/USD") == 20 and dst.last_offset("ETH/USD") == -1
    rest = list(copy_log(_store(tmp_path / "again", kafka_url).open("ticks"), dst, chunk=7))
    assert sum(c.rows for c in rest) == 80 - 21
    for sym in ("BTC/USD", "ETH/USD"):
        assert_frame_equal(dst.read_after(sym).drop("offset"), frame)


def test_an_archive_whose_newest_row_the_topic_no_longer_holds_goes_on(tmp_path, kafka_url):
    """Retention removed every row the archive had (the symbol was idle): rows 3.. are still
    the continuation of 0..2, nothing is missing, the archive goes on."""
    from rtml_cli.archive import copy_log

    frame = messy(5)
    dst = ParquetLog(tmp_path / "history", "ticks")
    with dst.writer() as w:
        w.append("BTC/USD", frame.head(3))
    # the topic as retention left it: offsets 3 and 4 only
    _half_a_batch(kafka_url, "BTC/USD", 3, frame.slice(3, 2), sent=2)
    copied = list(copy_log(_store(tmp_path, kafka_url).open("ticks"), dst))
    assert [(c.rows, c.last_offset) for c in copied] == [(2, 4)]
    assert_frame_equal(dst.read_after("BTC/USD").drop("offset"), frame)


def test_archiving_into_a_log_that_is_not_a_copy_is_a_clear_error(tmp_path, kafka_url):
    from rtml_cli.archive import copy_log

    with _store(tmp_path, kafka_url).open("ticks").writer() as w:
        w.append("BTC/USD", messy(5))
    dst = ParquetLog(tmp_path / "history", "ticks")
    with dst.writer() as w:
        w.append("BTC/USD", messy(3).with_columns(pl.col("n") + 1))  # another history
    with pytest.raises(LogError, match=r"is not a copy of topic .*offset 2 differ"):
        list(copy_log(_store(tmp_path, kafka_url).open("ticks"), dst))


def test_a_parquet_log_replays_into_kafka(tmp_path, kafka_url, examples_dir):
    """The reverse, for a backfill: every log of a data directory into fresh topics."""
    out = _rtml(examples_dir, kafka_url, "archive", "--reverse")
    assert out["rows"] > 0 and out["to"].startswith("Kafka")
    reader = LogStore(tmp_path / "reader", kafka_url)
    _same_logs(LogStore(examples_dir), reader, names=("ticks", "features", "examples"))


# -- scaling out ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_of_each_stage_splitting_the_partitions_build_what_one_builds(tmp_path, kafka_url):
    """Two feature builders (--member 1/2 and 2/2, each with its own state directory, as on two
    machines) write exactly the features and examples one builder writes; two trainers learn
    every example once between them; two predictors predict every features row once."""
    from click.testing import CliRunner

    from rtml_cli.build_state import shared_build
    from rtml_cli.checkpoint import CheckpointStore
    from rtml_cli.cli import cli
    from tests.test_features import assert_same, build, copy_ticks, features

    _rtml(tmp_path / "ingest", kafka_url, "ingest", "--max-ticks", "40000")
    owners = {s: partition_of(s, 4) % 2 + 1 for s in ("BTC/USD", "ETH/USD", "SOL/USD")}
    assert set(owners.values()) == {1, 2}  # both members have symbols to build
    share = lambda i: ["--member", f"{i}/2"]  # noqa: E731

    # the member owning partition 0 starts a build; the other waits for it
    early = CliRunner().invoke(cli, ["features", "--data-dir", str(tmp_path / "m2"), "--log", kafka_url, *share(2)])
    assert_clean_error(early, "no build on Kafka", "owns partition 0")
    built = {i: _rtml(tmp_path / f"m{i}", kafka_url, "features", *share(i)) for i in (1, 2)}
    assert {i: set(b["symbols"]) for i, b in built.items()} == {
        i: {s for s, m in owners.items() if m == i} for i in (1, 2)
    }
    kafka = LogStore(tmp_path / "reader", kafka_url)
    ref = tmp_path / "one"
    copy_ticks(tmp_path, ref, logs=kafka)
    build(ref)
    for name in ("features", "examples"):
        assert_same(features(tmp_path, name, kafka), features(ref, name))
    assert (
        json.loads((tmp_path / "m2" / "state" / "features.json").read_text())["build_id"]
        == shared_build(kafka)["build_id"]
    )

    learned = {}
    for i in (1, 2):
        d = tmp_path / f"m{i}"
        _rtml(d, kafka_url, "train", *share(i))
        manifest = CheckpointStore(d, "linear").list()[-1].manifest
        learned[i] = manifest
        _rtml(d, kafka_url, "predict", *share(i))
    examples = kafka.open("examples")
    assert sum(m["examples_learned"] for m in learned.values()) == sum(
        examples.last_offset(s) + 1 for s in examples.partitions()
    )
    for i, m in learned.items():
        assert {s for s, off in m["offsets"].items() if off >= 0} == {s for s, o in owners.items() if o == i}
    predictions = LogStore(tmp_path / "reader2", kafka_url).open("predictions").read_all()
    rows = kafka.open("features").read_all()
    assert predictions.height == rows.height
    assert predictions.select(pl.struct("symbol", "features_offset").is_unique().all()).item()


def test_a_long_running_stage_keeps_in_memory_only_what_it_has_not_consumed(tmp_path, kafka_url):
    """What a stage released (ingest: what it wrote; the trainer: what it learned; the feature
    builder: ticks before its open bars) is no longer held; reading it again is an error,
    never a silent gap; the offsets and counts stay right."""
    log = _store(tmp_path, kafka_url).open("ticks")
    frame = messy(40)
    with log.writer() as w:
        for start in range(0, 40, 10):
            w.append("BTC/USD", frame.slice(start, 10))
            log.release("BTC/USD", start + 9)
    assert log._rows["BTC/USD"].frames == [] and log.last_offset("BTC/USD") == 39 and log.row_count("BTC/USD") == 40
    assert log.partitions() == ["BTC/USD"]
    reader = _store(tmp_path / "r", kafka_url).open("ticks")
    reader.release("BTC/USD", 14)  # through the middle of a batch
    assert reader.read_after("BTC/USD", 14)["offset"].to_list() == list(range(15, 40))
    assert_frame_equal(reader.read_after("BTC/USD", 20, upto=22).drop("offset"), frame.slice(21, 2))
    with pytest.raises(LogError, match="released by this process"):
        reader.read_after("BTC/USD", 3)


def test_ingest_s_heartbeat_goes_to_kafka_where_a_builder_on_another_machine_reads_it(tmp_path, kafka_url):
    """The market clock of `features --follow` stops while ingest is down, from ingest's beats:
    on Kafka they are messages, so a builder with another --data-dir (another machine) reads
    them; the file is not written."""
    from rtml_cli.beat import BEAT_FILE, read_beat

    out = _rtml(tmp_path / "ingest", kafka_url, "ingest", "--max-ticks", "3000")
    assert not (tmp_path / "ingest" / BEAT_FILE).exists()
    beat = read_beat(tmp_path / "elsewhere", LogStore(tmp_path / "elsewhere", kafka_url))
    ticks = LogStore(tmp_path / "r", kafka_url).open("ticks")
    assert beat is not None and not beat.running and beat.started is not None
    assert beat.offsets == {s: ticks.last_offset(s) for s in ticks.partitions()}
    assert sum(o + 1 for o in beat.offsets.values()) == out["written"] == 3000
    assert beat.watermark == max(ticks.read_after(s)["ts"].dt.epoch("ns").max() for s in ticks.partitions())


def test_status_on_kafka_counts_what_is_there_and_holds_only_the_newest_rows(tmp_path, kafka_url):
    """`status --watch` and `rtml run` look again and again with one store: the counts follow
    the topics, and what it holds of them is the newest batch of each symbol."""
    from rtml_cli.status import snapshot

    d = tmp_path / "data"
    _rtml(d, kafka_url, "ingest", "--max-ticks", "2000", "--flush-every", "500")
    store = LogStore(d, kafka_url)
    first = snapshot(d, store)
    assert first["logs"]["ticks"]["rows"] == 2000 and first["stages"]["ingest"]["heartbeat_age_s"] >= 0
    _rtml(d, kafka_url, "ingest", "--max-ticks", "700", "--flush-every", "500")
    again = snapshot(d, store)
    assert again["logs"]["ticks"]["rows"] == 2700
    held = store.open("ticks")._rows
    assert all(sum(f.height for f in rows.frames) <= 500 for rows in held.values())
    ticks = LogStore(tmp_path / "r", kafka_url).open("ticks")
    for sym, seen in again["logs"]["ticks"]["symbols"].items():
        assert seen["newest_offset"] == ticks.last_offset(sym)
        assert seen["last"] == ticks.read_after(sym)["price"][-1]


def test_log_in_rtml_toml_or_rtml_log_chooses_kafka_for_every_command(tmp_path, kafka_url, monkeypatch):
    from click.testing import CliRunner

    from rtml_cli.cli import cli, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rtml.toml").write_text(f'log = "{kafka_url}"\ndata_dir = "data"\n')
    monkeypatch.setattr("sys.argv", ["rtml", "ingest", "--max-ticks", "300", "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert not (tmp_path / "data" / "ticks").exists()  # not the Parquet log
    ticks = LogStore(tmp_path / "r", kafka_url).open("ticks")
    assert sum(ticks.last_offset(s) + 1 for s in ticks.partitions()) == 300
    monkeypatch.setenv("RTML_LOG", kafka_url)
    r = CliRunner().invoke(cli, ["status", "--json", "--data-dir", str(tmp_path / "data")])
    assert r.exit_code == 0 and json.loads(r.stdout)["logs"]["ticks"]["rows"] == 300, r.output


@pytest.mark.parametrize(
    ("member", "partitions", "of", "share"),
    [("1/2", None, 4, [0, 2]), ("2/2", None, 4, [1, 3]), ("3/4", None, 8, [2, 6]), (None, "0,4,8", 9, [0, 4, 8])],
)
def test_member_and_partitions_name_shares_of_the_partitions(member, partitions, of, share):
    from rtml_cli.kafka import parse_share, share_partitions

    assert share_partitions(parse_share(member, partitions), of) == share


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--member", "3/2"], "is not I/N"),
        (["--member", "1/2", "--partitions", "0"], "not both"),
        (["--partitions", "a,b"], "partition numbers"),
        (["--member", "1/2", "--log", "somewhere"], "split a Kafka log"),
    ],
)
def test_bad_shares_are_clear_errors(rtml, args, says):
    assert_clean_error(rtml("features", *args), says)
