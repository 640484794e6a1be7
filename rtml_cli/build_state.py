"""The feature builder's state file, `state/features.json`: its intent and commit record.

Per symbol it holds what the builder has consumed and emitted (`SymbolState`), with the
settings the logs were built with and an id of this build. Before publishing features parts
the builder writes the new state as a *pending intent*; after, it commits it. On load, the
features log says whether a pending publish happened (its last offset is the one the intent
expected), so a crash anywhere between the two neither duplicates nor skips a bar.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rtml_cli import atomic
from rtml_cli.errors import ConfigError, FeatureError

STATE_FILE = Path("state") / "features.json"
FEATURES, EXAMPLES = "features", "examples"
# On Kafka, the build (its id and settings) is also a record in the topic `<prefix>builds`,
# so that feature builders splitting the partitions build one build, and trainers and
# predictors on other machines know it without the builders' state files.
BUILDS, BUILD_KEY = "builds", "features"


def write_record(data_dir: Path, build: dict[str, Any], source: str) -> bool:
    """Give a data directory that an archive copied features into the record of their build
    (what backtest, train and predict read), if it has none; True if written. It holds no
    symbols: a feature builder there refuses to go on from it."""
    path = Path(data_dir) / STATE_FILE
    if path.exists():
        return False
    doc = {"build_id": build["build_id"], "params": build["params"], "symbols": {}, "archived_from": source}
    atomic.write_json(path, doc)
    return True


def shared_build(logs: Any) -> dict[str, Any] | None:
    """The build record on Kafka ({"build_id", "params"}), or None when there is none yet."""
    rows = logs.open(BUILDS).read_after(BUILD_KEY, -1, upto=0)
    if rows.height == 0:
        return None
    try:
        row = rows.row(0, named=True)
        return {"build_id": str(row["build_id"]), "params": json.loads(row["params"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the build record in {logs.open(BUILDS).location} is damaged ({exc})") from None


def publish_build(logs: Any, build_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Write the build record unless one is there; returns the one that counts."""
    import polars as pl

    with logs.open(BUILDS).writer() as w:
        if w.next_offset(BUILD_KEY) == 0:
            w.append(BUILD_KEY, pl.DataFrame({"build_id": [build_id], "params": [json.dumps(params, sort_keys=True)]}))
    found = shared_build(logs)
    assert found is not None
    return found


@dataclass
class SymbolState:
    tick_offset: int = -1  # newest tick offset read
    open_from: int = 0  # first tick offset that may still belong to an open bar
    max_ts: int | None = None  # newest tick time seen (ns)
    closed_until: int | None = None  # every bar starting before this (ns) has been emitted
    late: int = 0  # ticks that arrived after their bar had closed
    bars: int = 0  # features rows emitted
    last_trade_bar: int | None = None  # start (ns) of the newest emitted bar with trades
    gap_bars_skipped: int = 0  # empty bars not emitted: past MAX_EMPTY_SECONDS after a trade


class BuildState:
    """The state file of one build of the features and examples logs."""

    def __init__(self, path: Path, params: dict[str, Any], symbols: dict[str, SymbolState], build_id: str):
        self.path = path
        self.params = params
        self.symbols = symbols
        self.build_id = build_id

    @classmethod
    def load(cls, data_dir: Path, params: dict[str, Any], features: Any, examples: Any, logs: Any = None) -> BuildState:
        """The state of the logs in `data_dir`, a pending publish resolved; a new one if there is
        none. Settings other than `params`, damage, or a state that does not match the features
        log are a FeatureError that says to rebuild. With `logs` on Kafka, the build is the one
        recorded there (see `shared_build`)."""
        path = data_dir / STATE_FILE
        shared = shared_build(logs) if logs is not None and logs.is_kafka else None
        if not path.exists():
            if features.partitions() or examples.partitions():
                if logs is not None and logs.is_kafka and not logs.leads():
                    raise FeatureError(
                        f"the features topics on {logs.where} hold rows of this member's partitions but {data_dir} "
                        "has no state: rebuild with the member owning partition 0 first (`rtml features --rebuild "
                        "--member 1/N` deletes the topics), then start this one"
                    )
                raise FeatureError(
                    f"{data_dir} has features or examples but no {STATE_FILE}; "
                    "run `rtml features --rebuild` to build them again from the ticks"
                )
            # A new build id: a rebuild starts offsets at 0 again, and a trainer must not
            # resume a model at offsets of a build that is gone.
            if logs is None or not logs.is_kafka:
                return cls(path, params, {}, uuid.uuid4().hex)
            if shared is None:
                if not logs.leads():
                    raise FeatureError(
                        f"there is no build on {logs.where} yet: the feature builder that owns partition 0 "
                        "(--member 1/N) starts it; start that one first"
                    )
                shared = publish_build(logs, uuid.uuid4().hex, params)
            if shared["params"] != params:
                raise FeatureError(_other_settings(shared["params"], params, logs.where))
            return cls(path, params, {}, shared["build_id"])
        try:
            doc = json.loads(path.read_text())
            symbols = {s: SymbolState(**v) for s, v in doc.get("symbols", {}).items()}
            pending = {
                s: (SymbolState(**e["state"]), int(e["expect_last_offset"]))
                for s, e in (doc.get("pending") or {}).items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FeatureError(
                f"{path} is damaged ({type(exc).__name__}: {exc}); run `rtml features --rebuild`"
            ) from None
        for sym, st in [*symbols.items(), *((s, st) for s, (st, _) in pending.items())]:
            bad = [
                f
                for f in ("tick_offset", "open_from", "late", "bars", "gap_bars_skipped")
                if type(getattr(st, f)) is not int
            ] + [
                f
                for f in ("max_ts", "closed_until", "last_trade_bar")
                if getattr(st, f) is not None and type(getattr(st, f)) is not int
            ]
            if bad:
                raise FeatureError(
                    f"{path} is damaged ({sym!r}: {', '.join(bad)} not whole numbers); run `rtml features --rebuild`"
                )
        if doc.get("params") != params:
            raise FeatureError(_other_settings(doc.get("params", {}), params, str(data_dir)))
        state = cls(path, params, symbols, doc.get("build_id") or "unknown")
        if logs is not None and logs.is_kafka and (shared is None or shared["build_id"] != state.build_id):
            raise FeatureError(
                f"{path} is the state of another build than the one on {logs.where} (rebuilt since); "
                "run `rtml features --rebuild` here"
            )
        for sym, (pending_state, expect_last_offset) in pending.items():
            # The intent was written before publishing; the features log says whether the
            # publish happened (its last offset is the one the intent expected).
            if features.last_offset(sym) == expect_last_offset:
                state.symbols[sym] = pending_state
        # (a partition directory a failed first write left empty holds no rows to know)
        unknown = sorted(s for s in features.partitions() if s not in state.symbols and features.last_offset(s) >= 0)
        if unknown:
            raise FeatureError(
                f"the features log has {unknown[0]!r}, which {path} does not know (written by something else, "
                "or an archive); run `rtml features --rebuild`"
            )
        for sym, st in state.symbols.items():
            if features.last_offset(sym) != st.bars - 1:
                raise FeatureError(
                    f"{STATE_FILE} says {st.bars} bars of {sym!r} were emitted, the features log has "
                    f"{features.last_offset(sym) + 1}; run `rtml features --rebuild`"
                )
        if pending:
            state.save()
        return state

    def save(self, pending: dict[str, dict[str, Any]] | None = None) -> None:
        """Write the state atomically; with `pending`, as an intent (symbol -> its new state
        and the features offset its publish will end at) to be committed by the next save."""
        doc = {
            "build_id": self.build_id,
            "params": self.params,
            "symbols": {s: asdict(st) for s, st in sorted(self.symbols.items())},
            "pending": pending,
        }
        atomic.write_json(self.path, doc)


def _other_settings(old: dict[str, Any], params: dict[str, Any], where: str) -> str:
    diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v)
    return (
        f"the features in {where} were built with other settings ({diff}); "
        "rerun with the same --bar/--horizon/--target/--lookback/--sql, or pass --rebuild "
        "to rebuild features and examples from the ticks"
    )


@dataclass(frozen=True)
class Build:
    """What the features and examples logs of a data directory were built with."""

    bar_s: int
    horizon: int
    target: str
    build_id: str | None  # None for a state written before builds had ids


def read_build(data_dir: Path, logs: Any = None) -> Build | None:
    """The build settings from the features state; None if there is none (no `rtml features`
    ran here). A damaged state is a ConfigError. On Kafka, the build recorded there."""
    if logs is not None and logs.is_kafka:
        shared = shared_build(logs)
        if shared is None:
            return None
        p = shared["params"]
        return Build(int(p["bar_s"]), int(p["horizon"]), str(p["target"]), shared["build_id"])
    path = Path(data_dir) / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        params = doc["params"]
        return Build(int(params["bar_s"]), int(params["horizon"]), str(params["target"]), doc.get("build_id"))
    except FileNotFoundError:
        from rtml_cli.logs import store_for

        store = store_for(data_dir, logs)
        built = [name for name in (FEATURES, EXAMPLES) if store.open(name).partitions()]
        if built:
            raise ConfigError(
                f"{data_dir} has {' and '.join(built)} logs but no {STATE_FILE}, the record of how they "
                "were built; run `rtml features --rebuild` to build them again from the ticks"
            ) from None
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged ({type(exc).__name__}: {exc}); run `rtml features --rebuild`") from None
