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


# per command: a key as a user writes it (the flag's name: `from`, `model`, `flush-every`) ->
# (click's name for the parameter, whether the flag repeats)
Options = dict[str, tuple[str, bool]]


def default_map(config: dict[str, Any], commands: dict[str, Options], path: str = CONFIG_FILE) -> dict[str, Any]:
    """Turn a config into click's `default_map`, rejecting keys no command knows.

    A key is an option's flag name (`from`, `model`, `flush_every` or `flush-every`); a
    repeatable option (`model`, `name`, `param`) takes a list, the others take a value (a list
    stands for the comma-separated text the flag takes: `symbols = ["A", "B"]`).
    """
    shared: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in commands:
                raise ConfigError(f"{path}: [{key}] is not an rtml command; known: {', '.join(sorted(commands))}")
            sections[key] = {}
            for k, v in value.items():
                found = commands[key].get(k.replace("-", "_"))
                if found is None:
                    raise ConfigError(f"{path}: [{key}] has unknown option {k!r}; see `rtml {key} --help`")
                sections[key][found[0]] = _as_cli_value(v, found[1])
        else:
            name = key.replace("-", "_")
            if not any(name in opts for opts in commands.values()):
                raise ConfigError(f"{path}: unknown option {key!r}; top-level keys must be options of some command")
            shared[name] = value
    out = {}
    for cmd, opts in commands.items():
        mine = {opts[k][0]: _as_cli_value(v, opts[k][1]) for k, v in shared.items() if k in opts}
        out[cmd] = {**mine, **sections.get(cmd, {})}
    return out


def _as_cli_value(value: Any, multiple: bool) -> Any:
    if multiple:
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value
