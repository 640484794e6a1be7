"""Where the logs live: the Parquet log in the data directory (the default), or Kafka topics.

`--log URL` / `RTML_LOG` / `log = "..."` in rtml.toml chooses: a directory path, or
`kafka://HOST:PORT[,HOST:PORT...][?prefix=rtml.&partitions=N&timeout=S]` (default: the data
directory). Either way the
stages' own state (the features state, checkpoints, the quarantine, heartbeats) stays in the
data directory: with stages on several machines, the directories they share must be shared
(see docs/deployment.md).

A log, whichever backend, offers what the stages use: `partitions()` (the symbols), `last_offset`,
`first_offset`, `read_after`, `read_in_time_order`, `read_all`, `follow`, `columns`, `tail`,
`exists`, `poll`, `sync`, `catch_up`, `release`, `delete`, `location`, and `writer()` whose
`append(symbol, frame)` publishes a batch atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml_cli.errors import ConfigError

if TYPE_CHECKING:
    from threading import Event

    from rtml_cli.kafka import Connection, Share

LOG_NAMES = ("ticks", "features", "examples", "predictions")
SHARED = {"builds", "heartbeats"}  # Kafka topics every process reads whole (the build record, ingest's beats)


@dataclass
class LogStore:
    """Opens the logs of one place: `store.open("ticks")`. A store for a data directory with no
    `--log` is the Parquet log in it."""

    data_dir: Path
    url: str | None = None  # None or a path: Parquet; kafka://...: Kafka
    share: Share = None  # Kafka: the partitions this process consumes
    _kafka: Connection | None = field(default=None, repr=False)
    _open: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.log_dir = self.data_dir  # where Parquet logs are
        if self.url is not None and not self.url.startswith("kafka:"):
            if "://" in self.url:
                raise ConfigError(f"--log {self.url!r}: give a directory or kafka://HOST:PORT")
            self.log_dir = Path(self.url)
            self.url = None
        if self.share is not None and not self.is_kafka:
            raise ConfigError("--member and --partitions split a Kafka log's partitions; give --log kafka://...")

    @property
    def is_kafka(self) -> bool:
        return self.url is not None

    @property
    def kafka(self) -> Connection:
        if self._kafka is None:
            from dataclasses import replace

            from rtml_cli.kafka import Connection, parse_url

            assert self.url is not None
            self._kafka = Connection(replace(parse_url(self.url), owned=self.share))
        return self._kafka

    @property
    def where(self) -> str:
        """The logs' place, for messages: the data directory, or the brokers and topic prefix."""
        if self.is_kafka:
            return f"Kafka {self.kafka.config.brokers} (topics {self.kafka.config.prefix}*)"
        return str(self.log_dir)

    def lock_path(self, name: str) -> Path:
        """The lock file a writer of log `name` holds (on this machine)."""
        if self.is_kafka:
            return self.data_dir / "kafka" / f"{self.kafka.config.prefix}{name}.lock"
        return self.log_dir / name / ".writer.lock"

    def leads(self) -> bool:
        """Whether this process's share holds partition 0 (all of a Parquet log does): the
        feature builder that does starts and deletes builds."""
        return not self.is_kafka or 0 in self.kafka.owned()

    def owns(self, symbol: str) -> bool:
        """Whether `symbol` is in this process's share of the partitions (always, on Parquet)."""
        if not self.is_kafka:
            return True
        from rtml_cli.kafka import partition_of

        return partition_of(symbol, self.kafka.partitions()) in self.kafka.owned()

    def open(self, name: str) -> Any:
        """The log `name` (one object per name and store, so a writer's appends are seen at once)."""
        if name not in self._open:
            if self.is_kafka:
                from rtml_cli.kafka import KafkaLog

                # the build record is everyone's, whatever partitions a process consumes
                self._open[name] = KafkaLog(self.kafka, self.data_dir, name, everything=name in SHARED)
            else:
                from rtml_cli.log import ParquetLog

                self._open[name] = ParquetLog(self.log_dir, name)
        return self._open[name]

    def wait(self, stop: Event, on_wait: Any = None, deadline: float | None = None) -> bool:
        """Kafka: until the brokers answer (False if `stop` came first; a LogError past `deadline`).
        Parquet: at once."""
        return self.kafka.wait(stop, on_wait, deadline) if self.is_kafka else True

    def close(self) -> None:
        for log in self._open.values():
            log.close()
        self._open.clear()


def store_for(data_dir: Path | str, logs: LogStore | None = None) -> LogStore:
    """`logs` if given, else the Parquet log in `data_dir` (what a stage built without --log uses)."""
    return logs if logs is not None else LogStore(Path(data_dir))
