"""The Kafka log: each rtml log a topic, rows as JSON messages keyed by symbol.

A log named `ticks` is the topic `<prefix>ticks`. A symbol always goes to the same partition,
the one Kafka's default (Java) partitioner gives its key: `murmur2(symbol) % partitions`, so
rows of a symbol stay in order. Every row carries its per-symbol `offset`, as in the Parquet
log: 0, 1, 2, ... within a symbol, whatever other symbols share the partition.

One message per row, the value a JSON object of the row's columns (times as integer
nanoseconds since the epoch, UTC; a float that is not finite as the string "NaN",
"Infinity" or "-Infinity"). A batch is what a writer appends at once; every message of it
has the header `rtml-batch: <writer>:<first>:<last>` and the batch's first message also
`rtml-schema` (the columns and their types). A batch counts once all its messages are
there: a writer killed halfway leaves an incomplete batch, which readers skip, and the next
writer writes those offsets again. So appends are atomic, as Parquet parts are, without
transactions (which some Kafka-protocol brokers lack).

Consumers assign partitions explicitly (no consumer group, no commits): a stage keeps where
it is where it keeps it on the Parquet log (the features state, the checkpoint manifest, the
predictions log's tail). A reader reads its partitions from the start of the topic's
retention and keeps their rows in memory; history beyond the live window belongs in the
Parquet log (`rtml archive`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from rtml_cli import atomic
from rtml_cli.errors import ConfigError, LogError
from rtml_cli.log import OFFSET, LogReads, check_symbol
from rtml_cli.logs import LOG_NAMES, SHARED

if TYPE_CHECKING:
    import polars as pl

DEFAULT_PARTITIONS = 8
DEFAULT_PREFIX = "rtml."
DEFAULT_TIMEOUT_S = 30.0
BATCH_HEADER = "rtml-batch"
TOPICS = (*LOG_NAMES, *sorted(SHARED))  # under the prefix
SCHEMA_HEADER = "rtml-schema"
MAX_BATCH_ROWS = 50_000_000  # more rows than any append writes: a header saying so is not rtml's
_MERGE_FRAMES = 64  # a symbol's rows are merged into one frame once they are in this many pieces


# A process's share of the partitions: None (all), explicit partition numbers, or (I, N) for
# `--member I/N` (the partitions p with p % N == I - 1).
Share = frozenset[int] | tuple[int, int] | None


@dataclass(frozen=True)
class KafkaConfig:
    """What a `kafka://` URL says: brokers, topic prefix, partitions, how long to wait."""

    brokers: str
    prefix: str = DEFAULT_PREFIX
    partitions: int | None = None  # None: what the topics have (new topics get DEFAULT_PARTITIONS)
    timeout_s: float = DEFAULT_TIMEOUT_S
    replication: int = 1  # replicas of each topic rtml creates (a production cluster: 3)
    owned: Share = None  # the partitions this process consumes (None: all)

    @property
    def url(self) -> str:
        return f"kafka://{self.brokers}"


def parse_url(url: str) -> KafkaConfig:
    """`kafka://HOST:PORT[,HOST:PORT...][?prefix=rtml.&partitions=N&replication=R&timeout=S]`."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"--log {url!r} is not kafka://HOST:PORT[,HOST:PORT...]; or give a directory")
    for broker in parts.netloc.split(","):
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--log {url!r}: {broker!r} is not HOST:PORT")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"prefix", "partitions", "timeout", "replication"}
    if unknown:
        raise ConfigError(
            f"--log {url!r}: unknown setting {sorted(unknown)[0]!r}; known: prefix, partitions, replication, timeout"
        )
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    if not all(ch.isalnum() or ch in "._-" for ch in prefix):
        raise ConfigError(f"--log {url!r}: a topic prefix may hold letters, digits, '.', '_' and '-' only")
    partitions = None
    if "partitions" in query:
        text = query["partitions"][-1]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"--log {url!r}: partitions must be a whole number of at least 1, not {text!r}")
        partitions = int(text)
    timeout = DEFAULT_TIMEOUT_S
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][-1])
        except ValueError:
            timeout = -1
        if not 0 < timeout < 86_400:
            raise ConfigError(f"--log {url!r}: timeout is seconds, a number above 0 (and below a day)")
    replication = 1
    if "replication" in query:
        text = query["replication"][-1]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"--log {url!r}: replication must be a whole number of at least 1, not {text!r}")
        replication = int(text)
    return KafkaConfig(parts.netloc, prefix, partitions, timeout, replication)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as its Java client computes it for a key), as an unsigned int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest, tail = length % 4, length - length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(symbol: str, partitions: int) -> int:
    """The partition of `symbol`: that of Kafka's default partitioner for the key."""
    return (murmur2(symbol.encode()) & 0x7FFFFFFF) % partitions


def parse_share(member: str | None, partitions: str | None) -> Share:
    """`--member I/N` (partitions p with p % N == I - 1) or `--partitions 0,4,8`: the share of
    the partitions this process consumes; None when neither is given."""
    if member and partitions:
        raise ConfigError("give --member or --partitions, not both")
    if partitions:
        try:
            chosen = frozenset(int(p) for p in partitions.split(",") if p.strip())
        except ValueError:
            chosen = frozenset({-1})
        if not chosen or min(chosen) < 0:
            raise ConfigError(f"--partitions {partitions!r} is not a list of partition numbers like 0,4,8")
        return chosen
    if member:
        i, _, n = member.partition("/")
        if not (i.isdigit() and n.isdigit()) or not 1 <= int(i) <= int(n):
            raise ConfigError(f"--member {member!r} is not I/N with 1 <= I <= N, e.g. 2/4")
        return (int(i), int(n))
    return None


def share_partitions(owned: Share, partitions: int) -> list[int]:
    """The partition numbers a share names, of `partitions`."""
    if owned is None:
        return list(range(partitions))
    if isinstance(owned, tuple):
        i, n = owned
        if n > partitions:
            raise ConfigError(f"--member {i}/{n}: the topics have only {partitions} partitions to share")
        return [p for p in range(partitions) if p % n == i - 1]
    beyond = sorted(p for p in owned if p >= partitions)
    if beyond:
        raise ConfigError(
            f"--partitions names partition {beyond[0]}, but the topics have {partitions} (0..{partitions - 1})"
        )
    return sorted(owned)


# -- encoding ----------------------------------------------------------------------------------------

_TYPES = {"int64", "int32", "float64", "float32", "string", "bool", "timestamp[ns, UTC]", "null"}


def _type_name(dtype: Any) -> str:
    import polars as pl

    simple = {
        pl.Int64: "int64",
        pl.Int32: "int32",
        pl.Float64: "float64",
        pl.Float32: "float32",
        pl.String: "string",
        pl.Boolean: "bool",
        pl.Null: "null",
    }
    for t, name in simple.items():
        if dtype == t:
            return name
    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns" and dtype.time_zone == "UTC":
        return "timestamp[ns, UTC]"
    raise LogError(
        f"a column of type {dtype} cannot go to Kafka; rtml's logs hold numbers, text, booleans and UTC times"
    )


def _polars_type(name: str) -> Any:
    import polars as pl

    return {
        "int64": pl.Int64,
        "int32": pl.Int32,
        "float64": pl.Float64,
        "float32": pl.Float32,
        "string": pl.String,
        "bool": pl.Boolean,
        "null": pl.Null,
        "timestamp[ns, UTC]": pl.Int64,  # read as nanoseconds, then cast
    }[name]


def encode(frame: pl.DataFrame) -> tuple[list[bytes], bytes]:
    """One JSON document per row, and the schema header of the batch."""
    import polars as pl

    # narrower integers (a user's feature query may return them) travel as int64
    narrow = [n for n, t in frame.schema.items() if t.is_integer() and t not in (pl.Int64, pl.Int32)]
    if narrow:
        frame = frame.with_columns(pl.col(narrow).cast(pl.Int64))
    columns = [[name, _type_name(dtype)] for name, dtype in frame.schema.items()]
    exprs, as_text = [], []
    for name, kind in columns:
        col = pl.col(name)
        if kind == "timestamp[ns, UTC]":
            exprs.append(col.dt.epoch("ns"))
        elif kind.startswith("float") and not frame[name].is_finite().fill_null(True).all():
            as_text.append(name)  # JSON has no NaN or infinities: this batch writes the column as text
            exprs.append(
                pl.when(col.is_nan())
                .then(pl.lit("NaN"))
                .when(col == float("inf"))
                .then(pl.lit("Infinity"))
                .when(col == float("-inf"))
                .then(pl.lit("-Infinity"))
                .otherwise(col.cast(pl.String))
                .alias(name)
            )
        else:
            exprs.append(col)
    lines = frame.select(exprs).write_ndjson().encode().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    schema: dict[str, Any] = {"columns": columns}
    if as_text:
        schema["text"] = as_text
    return lines, json.dumps(schema, separators=(",", ":")).encode()


def decode(values: list[bytes], schema_header: bytes) -> pl.DataFrame:
    """The rows of one batch (see `encode`); a ValueError says why they do not decode."""
    import io

    import polars as pl

    try:
        schema = json.loads(schema_header)
        columns = [(str(n), str(t)) for n, t in schema["columns"]]
        as_text = set(schema.get("text", []))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"its {SCHEMA_HEADER} header is not a schema ({exc})") from None
    unknown = [t for _, t in columns if t not in _TYPES]
    if unknown:
        raise ValueError(f"its schema names a type rtml does not know: {unknown[0]!r}")
    read_as = {n: (pl.String if n in as_text else _polars_type(t)) for n, t in columns}
    exprs = []
    for name, kind in columns:
        col = pl.col(name)
        if kind == "timestamp[ns, UTC]":
            col = col.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
        elif name in as_text:
            col = col.replace({"Infinity": "inf", "-Infinity": "-inf"}).cast(_polars_type(kind))
        exprs.append(col.alias(name))
    try:
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(values)), schema=read_as)
        if frame.height != len(values):
            raise ValueError(f"{len(values)} messages decoded as {frame.height} rows")
        return frame.select(exprs)
    except (pl.exceptions.PolarsError, OSError, TypeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"its values are not the JSON rows their schema says ({why})") from None


# -- the client --------------------------------------------------------------------------------------


def _quiet_logger() -> logging.Logger:
    """librdkafka's own log lines (connection refused, ...) would go to stderr mid-screen;
    rtml reports what matters itself."""
    logger = logging.getLogger("rtml.kafka")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


class Connection:
    """The brokers of one `kafka://` URL: metadata, topic creation, and waiting for them."""

    def __init__(self, config: KafkaConfig):
        from confluent_kafka.admin import AdminClient

        self.config = config
        self.errors: list[str] = []
        self.down_since: float | None = None  # when the client said no broker is reachable
        self._checked = 0.0
        self.admin = AdminClient(self._client_config())
        self._partitions: int | None = None

    def _client_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.brokers,
            "logger": _quiet_logger(),
            "error_cb": self._on_error,
            "socket.connection.setup.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 1000,
        }

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        self.errors.append(str(err.str() if hasattr(err, "str") else err))
        del self.errors[:-5]
        down = getattr(err, "code", lambda: None)() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)
        if down and self.down_since is None:
            self.down_since = time.monotonic()

    def check(self) -> None:
        """A LogError once the brokers have been out of reach for the URL's timeout (the client
        retries until then); at most one metadata request a second to see whether they are back."""
        since = self.down_since
        if since is None or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        try:
            self.topics(timeout=min(2.0, self.config.timeout_s))
            self.down_since = None
        except LogError:
            if time.monotonic() - since >= self.config.timeout_s:
                raise LogError(
                    f"{self.unreachable()}; gave up after {self.config.timeout_s:g} s "
                    "(everything written so far is complete; run again once they are back)"
                ) from None

    def topics(self, timeout: float | None = None) -> dict[str, int]:
        """Topic -> partitions; a LogError when the brokers do not answer within `timeout`."""
        from confluent_kafka import KafkaException

        try:
            md = self.admin.list_topics(timeout=timeout if timeout is not None else self.config.timeout_s)
        except KafkaException as exc:
            raise LogError(self.unreachable(exc)) from None
        return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}

    def unreachable(self, exc: object = None) -> str:
        why = self.errors[-1] if self.errors else ""
        if isinstance(exc, Exception) and exc.args:
            why = exc.args[0].str() if hasattr(exc.args[0], "str") else str(exc.args[0])
        return (
            f"Kafka at {self.config.brokers} does not answer ({why or 'no reply'}); "
            "start the brokers or check --log / RTML_LOG"
        )

    def wait(self, stop: Event, on_wait: Any = None, deadline: float | None = None) -> bool:
        """Until the brokers answer (True), or `stop` is set (False); `on_wait(reason)` says why
        not yet. Past `deadline` (a `time.monotonic()`), a LogError."""
        while not stop.is_set():
            try:
                self.topics(timeout=min(2.0, self.config.timeout_s))
                return True
            except LogError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LogError(f"{exc} (gave up at --duration)") from None
                if on_wait is not None:
                    on_wait(str(exc))
                stop.wait(1.0)
        return False

    def partitions(self, topic: str | None = None) -> int:
        """The partition count every rtml topic has (what exists decides; else the URL's, else
        the default); a ConfigError when the topics and the URL disagree."""
        if self._partitions is not None:
            return self._partitions
        mine = {self.config.prefix + name for name in TOPICS}
        found = {name: n for name, n in self.topics().items() if name in mine}
        counts = sorted(set(found.values()))
        want = self.config.partitions
        if len(counts) > 1:
            raise ConfigError(
                f"the topics under prefix {self.config.prefix!r} have different partition counts "
                f"({', '.join(f'{t}: {n}' for t, n in sorted(found.items()))}); a symbol would land in "
                "different partitions in each: give them one count"
            )
        if counts and want is not None and counts[0] != want:
            raise ConfigError(
                f"the topics under prefix {self.config.prefix!r} have {counts[0]} partitions, --log says "
                f"partitions={want}: symbols would move between partitions; use {counts[0]}, or another prefix"
            )
        self._partitions = counts[0] if counts else (want or DEFAULT_PARTITIONS)
        return self._partitions

    def create(self, topic: str, config: dict[str, str] | None = None) -> None:
        """Create `topic` with the common partition count if it does not exist, and wait until
        the brokers list it."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        n = self.partitions()
        if topic in self.topics():
            return
        futures = self.admin.create_topics(
            [NewTopic(topic, n, self.config.replication, config=config or {})], request_timeout=self.config.timeout_s
        )
        for fut in futures.values():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise LogError(
                        f"cannot create topic {topic} on {self.config.brokers}: {exc.args[0].str()}"
                    ) from None
        deadline = time.monotonic() + self.config.timeout_s
        while topic not in self.topics():  # metadata may lag the creation on a cluster
            if time.monotonic() > deadline:
                raise LogError(f"topic {topic} was created on {self.config.brokers} but is not listed; try again")
            time.sleep(0.1)

    def owned(self) -> list[int]:
        return share_partitions(self.config.owned, self.partitions())


# -- the log -----------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """A symbol's complete batches, in offset order."""

    firsts: list[int] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list)
    last: int = -1
    newest: int = -1  # the first offset of the newest batch
    start: int = -1  # the oldest offset the topic held when read
    released: int = -1  # rows up to this offset are no longer kept (see `KafkaLog.release`)

    def add(self, first: int, frame: pl.DataFrame) -> None:
        import polars as pl

        self.newest = first
        if self.start < 0:
            self.start = first
        if first <= self.released:  # rows this process released before they arrived
            self.last = max(self.last, first + frame.height - 1)
            frame = frame.filter(pl.col(OFFSET) > self.released)
            if frame.height == 0:
                return
            first = self.released + 1
        self.firsts.append(first)
        self.frames.append(frame)
        self.last = first + frame.height - 1
        if len(self.frames) > _MERGE_FRAMES:
            self.frames = [pl.concat(self.frames, how="diagonal_relaxed").rechunk()]
            self.firsts = self.firsts[:1]


@dataclass
class _Batch:
    writer: str
    first: int
    last: int
    schema: bytes | None
    values: list[bytes]
    start: int  # Kafka offset of its first message


class KafkaLog(LogReads):
    """One named log as a topic; the same reading and writing interface as `ParquetLog`."""

    def __init__(self, connection: Connection, data_dir: Path | str, name: str, everything: bool = False):
        self.conn = connection
        self.everything = everything  # all partitions, whatever this process's share
        self.data_dir = Path(data_dir)
        self.name = name
        self.topic = connection.config.prefix + name
        self._consumer: Any = None
        self._assigned: list[int] = []
        self._rows: dict[str, _Rows] = {}
        self._pending: dict[tuple[int, str], _Batch] = {}
        self._own: set[tuple[str, str, int]] = set()  # (symbol, writer, first) of batches this process appended
        self._position: dict[int, int] = {}  # next Kafka offset per partition
        self._at_end: dict[int, bool] = {}
        self._checked_at = 0.0
        self._synced = False  # read to the end once (the first read does)
        self._broken: LogError | None = None  # a message that could not be taken in
        self.abandoned = 0  # rows of batches a killed writer left incomplete

    def __repr__(self) -> str:
        return f"KafkaLog({self.conn.config.url}, {self.topic!r})"

    @property
    def location(self) -> str:
        return f"topic {self.topic} on {self.conn.config.brokers}"

    @property
    def lock_path(self) -> Path:
        """What a writer on this machine holds: beside the stage's state, one per topic (a
        Parquet log of the same name in the data directory has its own)."""
        return self.data_dir / "kafka" / f"{self.topic}.lock"

    # -- the consumer --------------------------------------------------------------------------

    def exists(self) -> bool:
        return self._ensure(force=True)

    def _ensure(self, force: bool = False) -> bool:
        """A consumer assigned to the owned partitions, once the topic exists."""
        if self._consumer is not None:
            return True
        now = time.monotonic()
        if not force and now - self._checked_at < 1.0:
            return False
        self._checked_at = now
        if self.topic not in self.conn.topics():
            return False
        from confluent_kafka import Consumer, TopicPartition

        self._assigned = list(range(self.conn.partitions())) if self.everything else self.conn.owned()
        consumer = Consumer(
            {
                **self.conn._client_config(),
                "group.id": "rtml-unused",  # required by the client; partitions are assigned, never committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                # how long a broker may hold a fetch when there is nothing new: new rows reach
                # a follower within it; at 10 ms an idle follower kept the broker at 25% of a core
                "fetch.wait.max.ms": 100,
                "fetch.queue.backoff.ms": 10,
            }
        )
        # from offset 0, or the oldest kept (auto.offset.reset) when retention has removed it: one
        # request fewer than OFFSET_BEGINNING, which asks the brokers first
        consumer.assign([TopicPartition(self.topic, p, 0) for p in self._assigned])
        self._consumer = consumer
        self._at_end = dict.fromkeys(self._assigned, False)
        return True

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._synced = False

    def poll(self) -> None:
        """Take in what the consumer has fetched, without waiting; the first time, read to the end
        (so a one-shot reader sees the whole log as it is at its start)."""
        if self._broken is not None:
            raise self._broken
        if not self._synced:
            if self._ensure():
                self.sync()
            return
        self.conn.check()
        for _ in range(1000):
            if not self._take(self._consumer.consume(100_000, 0)):
                return

    def sync(self, stop: Event | None = None) -> None:
        """Read every partition to its end as of now (the newest offsets a writer resumes from)."""
        if not self._ensure(force=True):
            return
        deadline = time.monotonic() + self.conn.config.timeout_s
        while not all(self._at_end.values()):
            if stop is not None and stop.is_set():
                return
            if self._take(self._consumer.consume(100_000, 0.05)):
                deadline = time.monotonic() + self.conn.config.timeout_s  # still coming: not stuck
            elif time.monotonic() > deadline:
                raise LogError(
                    f"{self.conn.unreachable()} (reading {self.topic} to its end took over "
                    f"{self.conn.config.timeout_s:g} s)"
                )
        self._synced = True

    def _take(self, messages: list[Any]) -> int:
        """Take in fetched messages; the number of rows' messages among them. An error leaves the
        log broken for good (it is raised again by every later read): the messages after the bad
        one are not taken in, so going on would lose them."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._take_all(messages)
        except LogError as exc:
            self._broken = exc
            raise

    def _take_all(self, messages: list[Any]) -> int:
        from confluent_kafka import KafkaError

        n = 0
        for m in messages:
            err = m.error()
            p = m.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end[p] = m.offset() >= self._position.get(p, 0)
                    continue
                if err.fatal() or err.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise LogError(f"reading {self.topic}[{p}] failed: {err.str()}")
                self.conn._on_error(err)
                continue
            n += 1
            self._at_end[p] = False
            self._position[p] = m.offset() + 1
            self._message(p, m)
        return n

    def _message(self, p: int, m: Any) -> None:
        where = f"{self.topic}[{p}] at Kafka offset {m.offset()}"
        key = m.key()
        headers = dict(m.headers() or ())
        batch = headers.get(BATCH_HEADER)
        if key is None or batch is None:
            raise LogError(
                f"the message at {where} is not an rtml row (no symbol key or no {BATCH_HEADER} header); "
                f"only rtml writes to {self.topic}: move other producers to another topic"
            )
        try:
            symbol = key.decode()
            writer, first_s, last_s = batch.decode().split(":")
            first, last = int(first_s), int(last_s)
        except (UnicodeDecodeError, ValueError):
            raise LogError(f"the message at {where} has a bad key or {BATCH_HEADER} header ({batch!r})") from None
        if not 0 <= first <= last or last - first >= MAX_BATCH_ROWS or m.value() is None:
            raise LogError(
                f"the message at {where} is not an rtml row ({BATCH_HEADER} {batch.decode()!r}"
                f"{', no value' if m.value() is None else ''})"
            )
        slot = (p, symbol)
        pending = self._pending.get(slot)
        if pending is None or (pending.writer, pending.first) != (writer, first):
            if pending is not None:  # a writer died in the middle of that batch: it never counts
                self.abandoned += len(pending.values)
            pending = _Batch(writer, first, last, headers.get(SCHEMA_HEADER), [], m.offset())
            self._pending[slot] = pending
        pending.values.append(m.value())
        if len(pending.values) == last - first + 1:
            del self._pending[slot]
            self._complete(symbol, pending, where)

    def _complete(self, symbol: str, batch: _Batch, where: str) -> None:
        rows = self._rows.setdefault(symbol, _Rows())
        if (symbol, batch.writer, batch.first) in self._own:  # appended by this process: already in memory
            self._own.discard((symbol, batch.writer, batch.first))
            return
        if rows.last >= 0 and batch.first != rows.last + 1:
            raise LogError(
                f"the batch of {symbol!r} ending at {where} holds offsets {batch.first}-{batch.last}, but "
                f"{self.topic} has {symbol!r} up to {rows.last}: two writers wrote this symbol; stop one, and "
                "rebuild the log"
            )
        if batch.schema is None:
            raise LogError(
                f"the batch of {symbol!r} ending at {where} has no {SCHEMA_HEADER} header on its first message"
            )
        try:
            frame = decode(batch.values, batch.schema)
        except ValueError as exc:
            raise LogError(f"the batch of {symbol!r} ending at {where} does not decode: {exc}") from None
        if OFFSET not in frame.columns or frame[OFFSET].to_list() != list(range(batch.first, batch.last + 1)):
            raise LogError(
                f"the batch of {symbol!r} ending at {where} does not hold offsets {batch.first}-{batch.last}"
            )
        rows.add(batch.first, frame)

    # -- reading (the ParquetLog interface) ----------------------------------------------------

    def partitions(self) -> list[str]:
        self.poll()
        return sorted(s for s, r in self._rows.items() if r.last >= 0)

    def last_offset(self, symbol: str) -> int:
        self.poll()
        rows = self._rows.get(symbol)
        return rows.last if rows is not None else -1

    def first_offset(self, symbol: str) -> int:
        rows = self._rows.get(symbol)
        return rows.start if rows is not None and rows.start >= 0 else 0

    def row_count(self, symbol: str) -> int:
        rows = self._rows.get(symbol)
        return rows.last - rows.start + 1 if rows is not None and rows.start >= 0 else 0

    def release(self, symbol: str, upto: int) -> None:
        """This process will not read rows of `symbol` up to offset `upto` again: stop keeping
        them in memory (what bounds a long-running stage's memory; a read of them afterwards
        is an error, not a silent gap)."""
        import polars as pl

        rows = self._rows.setdefault(symbol, _Rows())  # (released before read: rows up to it are not kept)
        if upto <= rows.released:
            return
        rows.released = upto
        keep = [(f, fr) for f, fr in zip(rows.firsts, rows.frames, strict=True) if f + fr.height - 1 > upto]
        if keep and keep[0][0] <= upto:  # a batch the bound cuts through
            _, frame = keep[0]
            keep[0] = (upto + 1, frame.filter(pl.col(OFFSET) > upto))
        rows.firsts = [f for f, _ in keep]
        rows.frames = [fr for _, fr in keep]

    def read_after(
        self,
        symbol: str,
        offset: int = -1,
        columns: list[str] | list[pl.Expr] | None = None,
        upto: int | None = None,
        verified: set[Path] | None = None,
    ) -> pl.DataFrame:
        import polars as pl

        self.poll()
        rows = self._rows.get(symbol)
        if rows is not None and rows.released >= 0 and offset < rows.released:
            raise LogError(
                f"rows {offset + 1}-{rows.released} of {symbol!r} in {self.topic} were read and released by this "
                "process already (a bug: report it)"
            )
        if rows is None or not rows.frames or rows.last <= offset:
            return pl.DataFrame()
        if offset >= 0 and offset + 1 < rows.start:
            raise LogError(
                f"{self.topic} no longer holds offsets {offset + 1}-{rows.start - 1} of {symbol!r} (the "
                "topic's retention deleted them before this stage read them); rebuild from the Parquet archive"
            )
        start = max(0, bisect_right(rows.firsts, offset) - 1)
        stop = len(rows.frames) if upto is None else bisect_right(rows.firsts, upto)
        frames = rows.frames[start:stop]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        bounds = pl.col(OFFSET) > offset
        if upto is not None:
            bounds &= pl.col(OFFSET) <= upto
        frame = frame.filter(bounds)
        return frame.select(columns) if columns is not None else frame

    def refresh(self) -> None:
        """Take in every message the brokers held when called (`poll` takes what was fetched):
        for a reader that compares topics, as `rtml status` does, where a lagging view of one
        would make a consumer look caught up when it is not."""
        from confluent_kafka import KafkaException, TopicPartition

        self.poll()
        if self._consumer is None:
            return
        try:
            ends = {
                p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)[1]
                for p in self._assigned
            }
        except KafkaException as exc:
            raise LogError(self.conn.unreachable(exc)) from None
        deadline = time.monotonic() + self.conn.config.timeout_s
        while any(self._position.get(p, 0) < end for p, end in ends.items()) and time.monotonic() < deadline:
            self._take(self._consumer.consume(100_000, 0.05))

    def catch_up(self, symbol: str, offset: int) -> int:
        """The symbol's last offset once it reaches `offset` (rows another process says it
        published, which this reader may not have fetched yet), or as far as it got within the
        URL's timeout."""
        deadline = time.monotonic() + self.conn.config.timeout_s
        while (last := self.last_offset(symbol)) < offset and time.monotonic() < deadline:
            time.sleep(0.02)
        return last

    def keep_newest(self) -> None:
        """Release every row but each symbol's newest batch (a reader that only looks at the
        end, as `rtml status` does)."""
        for symbol, rows in self._rows.items():
            if rows.newest > 0:
                self.release(symbol, rows.newest - 1)

    def columns(self, symbol: str) -> list[str] | None:
        rows = self._rows.get(symbol)
        return list(rows.frames[-1].columns) if rows is not None and rows.frames else None

    def tail(self, symbol: str) -> pl.DataFrame | None:
        """The newest batch's rows (at least one row), or None."""
        rows = self._rows.get(symbol)
        if rows is None or not rows.frames:
            return None
        import polars as pl

        return rows.frames[-1].filter(pl.col(OFFSET) >= rows.newest)

    def lag(self) -> dict[int, dict[str, int]]:
        """Per assigned partition: the Kafka offset read up to and the broker's end."""
        from confluent_kafka import TopicPartition

        out: dict[int, dict[str, int]] = {}
        if not self._ensure(force=True):
            return out
        for p in self._assigned:
            _lo, hi = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            out[p] = {"read": self._position.get(p, 0), "end": max(hi, self._position.get(p, 0))}
        return out

    # -- writing -------------------------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[KafkaWriter]:
        """A writer of this topic. A lock file in the data directory keeps a second writer on
        this machine out; across machines, the `--member` shares must not overlap (a reader
        that sees two writers' batches for one symbol stops with an error)."""
        busy = (
            f"another rtml process (pid {{pid}}) is writing {self.topic} from {self.data_dir}; stop it first, "
            "or use another --data-dir"
        )
        with atomic.exclusive(self.lock_path, busy):
            # the build record must outlive any retention (everything built is numbered under
            # it); of the heartbeats only the newest counts
            config = {"builds": {"retention.ms": "-1"}, "heartbeats": {"cleanup.policy": "compact"}}.get(self.name)
            self.conn.create(self.topic, config)
            writer = KafkaWriter(self)  # first: its producer gets its id from the brokers meanwhile
            try:
                self.sync()
                yield writer
            finally:
                writer.close()

    def delete(self) -> None:
        """Delete the topic (refused while a writer on this machine holds it)."""
        from confluent_kafka import KafkaException

        if self.topic not in self.conn.topics():
            return
        busy = f"pid {{pid}} is writing {self.topic}; stop it first"
        with atomic.exclusive(self.lock_path, busy):
            self.close()
            futures = self.conn.admin.delete_topics([self.topic], request_timeout=self.conn.config.timeout_s)
            for fut in futures.values():
                try:
                    fut.result()
                except KafkaException as exc:
                    why = exc.args[0].str()
                    raise LogError(f"cannot delete topic {self.topic}: {why}; delete it by hand") from None
            deadline = time.monotonic() + self.conn.config.timeout_s
            while self.topic in self.conn.topics() and time.monotonic() < deadline:
                time.sleep(0.1)
        self._rows.clear()
        self._pending.clear()
        self._position.clear()
        self._own.clear()

    def _inject(self, symbol: str, first: int, frame: pl.DataFrame, writer: str) -> None:
        """Rows this process just appended: readable at once, skipped when they come back."""
        self._own.add((symbol, writer, first))
        self._rows.setdefault(symbol, _Rows()).add(first, frame)


class KafkaWriter:
    """Appends batches to a topic (get one from `KafkaLog.writer()`)."""

    def __init__(self, log: KafkaLog):
        from confluent_kafka import Producer

        self.log = log
        self.id = uuid.uuid4().hex[:12]
        self._next: dict[str, int] = {}
        self._failed: list[str] = []
        self._partitions = log.conn.partitions()
        self.producer = Producer(
            {
                **log.conn._client_config(),
                "enable.idempotence": True,  # in order, once, across the client's retries
                "acks": "all",
                "linger.ms": 2,
                "queue.buffering.max.messages": 1_000_000,
                "message.timeout.ms": int(log.conn.config.timeout_s * 1000),
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
            }
        )

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(err.str())

    def close(self) -> None:
        self.producer.flush(1.0)

    def remove_orphans(self) -> int:
        return 0

    def next_offset(self, symbol: str) -> int:
        if symbol not in self._next:
            self._next[symbol] = self.log.last_offset(symbol) + 1
        return self._next[symbol]

    def append(self, symbol: str, frame: pl.DataFrame) -> tuple[int, int]:
        """Publish `frame` as one batch of `symbol`; returns its (first, last) offsets once the
        brokers have every message of it (a LogError otherwise: then readers never see it)."""
        import polars as pl

        if frame.height == 0:
            raise LogError("refusing to append an empty batch")
        if OFFSET in frame.columns:
            raise LogError(f"the batch already has an {OFFSET!r} column; the log assigns offsets")
        check_symbol(symbol)
        p = partition_of(symbol, self._partitions)
        if p not in self.log._assigned:
            raise LogError(
                f"{symbol!r} belongs to partition {p} of {self.log.topic}, which this process does not own "
                "(--member/--partitions); the member that owns it writes it"
            )
        first = self.next_offset(symbol)
        last = first + frame.height - 1
        frame = frame.select(pl.int_range(first, last + 1, dtype=pl.Int64).alias(OFFSET), pl.all())
        values, schema = encode(frame)
        key = symbol.encode()
        batch: list[tuple[str, str | bytes | None]] = [(BATCH_HEADER, f"{self.id}:{first}:{last}".encode())]
        first_headers = [*batch, (SCHEMA_HEADER, schema)]
        produce = self.producer.produce
        topic = self.log.topic
        for i, value in enumerate(values):
            while True:
                try:
                    produce(topic, value, key, partition=p, headers=first_headers if i == 0 else batch)
                    break
                except BufferError:  # the client's queue is full: let it send
                    self.producer.poll(0.05)
        left = self.producer.flush(self.log.conn.config.timeout_s + 5)
        if left or self._failed:
            why = self._failed[-1] if self._failed else f"{left} messages not acknowledged"
            raise LogError(
                f"Kafka at {self.log.conn.config.brokers} did not take offsets {first}-{last} of {symbol!r} "
                f"({why}); readers skip the incomplete batch, and the next run writes it again"
            )
        self.log._inject(symbol, first, frame, self.id)
        self._next[symbol] = last + 1
        return first, last

    def compact(self, symbol: str, target_rows: int = 1_000_000) -> Any:
        raise LogError(
            f"{self.log.topic} is a Kafka topic: Kafka's retention and compaction settings apply, not rtml compact"
        )
