"""`rtml status`: where the pipeline stands, read from the data directory alone.

Everything here only reads: the logs' part names and the last part of each partition, the
stages' state files and checkpoint manifests, ingest's heartbeat, and the kernel's table of
locks (which stage holds which writer lock now). It takes no lock and writes nothing, so it
can run at any moment beside the stages.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rtml_cli import atomic
from rtml_cli.beat import read_beat
from rtml_cli.build_state import STATE_FILE, read_build
from rtml_cli.checkpoint import CheckpointStore, signing_key
from rtml_cli.errors import ConfigError, RtmlError
from rtml_cli.logs import LOG_NAMES, LogStore, store_for

NS = 1_000_000_000


def snapshot(data_dir: Path, store: LogStore | None = None) -> dict[str, Any]:
    """Logs, running stages, consumers and their lag, checkpoints, and end-to-end freshness."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"there is no data directory {data_dir}; run `rtml ingest` first or check --data-dir")
    store = store_for(data_dir, store)
    now_ns = time.time_ns()
    logs = {name: _log(store.open(name)) for name in LOG_NAMES}
    out: dict[str, Any] = {
        "data_dir": str(data_dir),
        "log": store.where,
        "at": _iso(now_ns),
        "empty": not any(logs[name]["symbols"] for name in LOG_NAMES),
        "logs": logs,
        "stages": _stages(data_dir, store, now_ns),
        "consumers": {},
        "checkpoints": {},
    }
    out["consumers"]["features"] = _features_consumer(data_dir, logs)
    for name, cp in _checkpoints(data_dir, now_ns).items():
        out["checkpoints"][name] = cp
        out["consumers"][f"train {name}"] = _train_consumer(cp, logs)
    out["consumers"].update(_predict_consumers(data_dir, store, logs))
    out["freshness"] = _freshness(data_dir, store, logs, now_ns)
    return out


# -- logs ----------------------------------------------------------------------------------------


def _log(log: Any) -> dict[str, Any]:
    if hasattr(log, "refresh"):  # a Kafka topic: everything the brokers hold now, not only what was fetched
        log.refresh()
    symbols = {}
    for sym in log.partitions():
        last = log.last_offset(sym)
        if last < 0:
            continue
        symbols[sym] = {"rows": last + 1, "newest_offset": last, **_newest(log, sym)}
    times = [s["newest_ts"] for s in symbols.values() if s["newest_ts"]]
    out = {
        "partitions": len(symbols),
        "rows": sum(s["rows"] for s in symbols.values()),
        "newest_ts": max(times) if times else None,
        "symbols": symbols,
    }
    if hasattr(log, "lag"):  # a Kafka topic: where this read stopped in each partition, and its end
        out["kafka"] = {"topic": log.topic, "partitions": log.lag(), "abandoned_rows": log.abandoned}
        if log.name != "predictions":  # (whose tail predict's offsets are read from) status needs only
            log.keep_newest()  # the newest rows: `status --watch` and `rtml run` look again and again
    return out


LAST = {"ticks": "price", "features": "close", "examples": "close"}


def _newest(log: Any, symbol: str) -> dict[str, Any]:
    """From the partition's newest part or batch: its newest `ts`, and the last row's price
    (ticks), close (bars), or each model's newest prediction."""
    tail = log.tail(symbol)
    if tail is None or tail.height == 0 or "ts" not in tail.columns:
        return {"newest_ts": None}
    newest = tail["ts"].max()
    out: dict[str, Any] = {"newest_ts": newest.isoformat() if isinstance(newest, datetime) else None}
    if log.name in LAST and LAST[log.name] in tail.columns:
        out["last"] = tail[LAST[log.name]][-1]
    if log.name == "predictions" and {"model", "prediction", "latency_ms"} <= set(tail.columns):
        tail = tail.sort("ts")
        last = tail.group_by("model", maintain_order=True).last()
        rows = last.select("model", "ts", "prediction").iter_rows()
        out["newest_predictions"] = {m: {"ts": t.isoformat(), "prediction": p} for m, t, p in rows}
        out["newest_latency_ms"] = tail["latency_ms"][-1]  # of the newest row: when it was made
    return out


# -- stages --------------------------------------------------------------------------------------


def _stages(data_dir: Path, store: LogStore, now_ns: int) -> dict[str, Any]:
    """Which stage holds which writer lock now, and ingest's heartbeat."""
    stages: dict[str, Any] = {}
    beat = None
    with contextlib.suppress(RtmlError):  # a damaged heartbeat: the stages that read it say so
        beat = read_beat(data_dir, store)
    ingest: dict[str, Any] = {"pid": atomic.holder(store.lock_path("ticks"))}
    if beat is not None:
        ingest["heartbeat_age_s"] = round(now_ns / NS - beat.beat, 1)
        if beat.running and beat.feed is not None and ingest["pid"] is not None:  # (not a killed one's)
            ingest["feed"] = beat.feed
    stages["ingest"] = ingest
    stages["features"] = {"pid": atomic.holder(store.lock_path("features"))}
    root = data_dir / "checkpoints"
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and not d.name.startswith("."):
            stages[f"train {d.name}"] = {"pid": atomic.holder(d / ".train.lock")}
    stages["predict"] = {"pid": atomic.holder(store.lock_path("predictions"))}
    for s in stages.values():
        s["running"] = s["pid"] is not None
    return stages


# -- consumers -----------------------------------------------------------------------------------


def _lag(
    offsets: dict[str, int], source: dict[str, Any], newest: dict[str, str | None] | None = None
) -> dict[str, Any]:
    """Rows behind the source log per symbol and in all; with `newest` (the consumer's newest
    time per symbol), seconds of market time behind the source's newest."""
    behind, seconds = {}, []
    for sym, src in source["symbols"].items():
        behind[sym] = max(0, src["newest_offset"] - offsets.get(sym, -1))
        mine = (newest or {}).get(sym)
        if newest is not None and mine and src["newest_ts"]:
            seconds.append((_ns(src["newest_ts"]) - _ns(mine)) / NS)
    return {
        "behind_rows": sum(behind.values()),
        "behind_s": round(max(seconds), 1) if seconds else None,
        "symbols": behind,
    }


def _features_consumer(data_dir: Path, logs: dict[str, Any]) -> dict[str, Any] | None:
    path = data_dir / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        symbols = doc["symbols"]
        offsets = {s: int(v["tick_offset"]) for s, v in symbols.items()}
        newest = {s: _iso(int(v["max_ts"])) if v.get("max_ts") is not None else None for s, v in symbols.items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        return {"problem": f"{path} is damaged ({type(exc).__name__}); run `rtml features --rebuild`"}
    return _lag(offsets, logs["ticks"], newest)


def _checkpoints(data_dir: Path, now_ns: int) -> dict[str, Any]:
    """Per model name, its newest checkpoint: version, what it learned, and whether it verifies."""
    root = data_dir / "checkpoints"
    key = signing_key()
    out: dict[str, Any] = {}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        listed = CheckpointStore(data_dir, d.name).list()
        if not listed:
            out[d.name] = {"version": None}
            continue
        cp = listed[-1]
        verified = cp.verification(key)
        m = cp.manifest
        created = m.get("created_at")
        offsets = m.get("offsets")
        learned, until = m.get("examples_learned"), m.get("trained_until")
        out[d.name] = {  # a manifest not written by rtml may hold anything: keep what has its type
            "version": cp.version,
            "examples_learned": learned if type(learned) is int else None,
            "trained_until": until if isinstance(until, str) else None,
            "age_s": round((now_ns - _ns(created)) / NS, 1) if isinstance(created, str) and _ns(created) else None,
            "verified": verified,
            "diverged": m.get("diverged") is True,
            "metrics": m.get("metrics") if isinstance(m.get("metrics"), dict) else {},
            "offsets": offsets if isinstance(offsets, dict) else {},
        }
    return out


def _train_consumer(cp: dict[str, Any], logs: dict[str, Any]) -> dict[str, Any]:
    offsets = {str(s): int(v) for s, v in cp.get("offsets", {}).items() if isinstance(v, int)}
    lag = _lag(offsets, logs["examples"])
    until = cp.get("trained_until")
    newest = logs["examples"]["newest_ts"]
    if isinstance(until, str) and newest and _ns(until):
        lag["behind_s"] = round((_ns(newest) - _ns(until)) / NS, 1)
    return lag


def _predict_consumers(data_dir: Path, store: LogStore, logs: dict[str, Any]) -> dict[str, Any]:
    """Each model's offsets in the features log: the bookmark, moved on by the predictions
    log's tail (what `rtml predict` itself does on start)."""
    from rtml_cli.predict import ConsumerOffsets

    predictions = store.open("predictions")
    if not predictions.partitions() and not (data_dir / "state" / "predict.json").exists():
        return {}
    try:
        build = read_build(data_dir, store)
        consumers = ConsumerOffsets(data_dir, [], predictions)
        consumers.resume(build.build_id if build else None)
    except RtmlError as exc:
        return {"predict": {"problem": str(exc)}}
    newest = _newest_predicted(logs["predictions"])
    return {
        f"predict {name}": _lag(offsets, logs["features"], newest.get(name, {}))
        for name, offsets in sorted(consumers.models.items())
    }


def _newest_predicted(predictions: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Per model, per symbol: the newest bar time predicted (what `_log` read of each
    partition's last part)."""
    out: dict[str, dict[str, str | None]] = {}
    for sym, part in predictions["symbols"].items():
        for model, newest in part.get("newest_predictions", {}).items():
            out.setdefault(model, {})[sym] = newest["ts"]
    return out


# -- freshness -----------------------------------------------------------------------------------


def _freshness(data_dir: Path, store: LogStore, logs: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """From the newest tick to the newest prediction: in market time (how far the predicted
    bar's end lags the newest trade) and in wall time (how long ago that prediction was made),
    from what `_log` read of the predictions log's last parts."""
    tick = logs["ticks"]["newest_ts"]
    out: dict[str, Any] = {"newest_tick": tick, "newest_prediction": None, "market_lag_s": None, "wall_age_s": None}
    newest = [p for p in logs["predictions"]["symbols"].values() if p["newest_ts"] and "newest_latency_ms" in p]
    if not newest:
        return out
    build = None
    with contextlib.suppress(RtmlError):
        build = read_build(data_dir, store)
    bar_ns = build.bar_s * NS if build else 0
    row = max(newest, key=lambda p: _ns(p["newest_ts"]))
    newest_ns = _ns(row["newest_ts"])
    out["newest_prediction"] = row["newest_ts"]
    if tick:
        out["market_lag_s"] = round((_ns(tick) - newest_ns - bar_ns) / NS, 1)
    out["wall_age_s"] = round((now_ns - newest_ns - bar_ns - int((row["newest_latency_ms"] or 0) * 1e6)) / NS, 1)
    return out


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, UTC).isoformat()


def _ns(text: str) -> int:
    """An ISO time as ns since the epoch (UTC when it names no zone); 0 if it does not parse."""
    try:
        value = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        return 0
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(value.timestamp() * NS)
