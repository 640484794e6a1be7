"""Defaults from `rtml.toml`: top-level keys apply to every command, `[command]` tables to one.

Precedence, highest first: command-line flag, environment variable (`RTML_DATA_DIR`),
`rtml.toml` in the working directory, built-in default.

    data_dir = "./market-data"

    [ingest]
    source = "replay"
    flush_every = 50000
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from rtml_cli.errors import ConfigError

CONFIG_FILE = "rtml.toml"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed config file, or {} when there is none."""
    path = path or Path.cwd() / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or remove it") from None


def default_map(config: dict[str, Any], commands: dict[str, set[str]], path: str = CONFIG_FILE) -> dict[str, Any]:
    """Turn a config into click's `default_map`, rejecting keys no command knows.

    `commands` maps each command name to the names of its parameters.
    """
    shared: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    all_params = set().union(*commands.values()) if commands else set()
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in commands:
                raise ConfigError(f"{path}: [{key}] is not an rtml command; known: {', '.join(sorted(commands))}")
            sections[key] = {}
            for k, v in value.items():
                name = k.replace("-", "_")
                if name not in commands[key]:
                    raise ConfigError(f"{path}: [{key}] has unknown option {k!r}; see `rtml {key} --help`")
                sections[key][name] = _as_cli_value(v)
        else:
            name = key.replace("-", "_")
            if name not in all_params:
                raise ConfigError(f"{path}: unknown option {key!r}; top-level keys must be options of some command")
            shared[name] = _as_cli_value(value)
    return {
        cmd: {**{k: v for k, v in shared.items() if k in params}, **sections.get(cmd, {})}
        for cmd, params in commands.items()
    }


def _as_cli_value(value: Any) -> Any:
    # Lists are written as the comma-separated text the flags take (symbols = ["A", "B"]).
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value
