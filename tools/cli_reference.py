"""Regenerate the CLI reference (docs/cli.md) from `--help` (run: `make docs`; a test checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from rtml_cli.cli import cli

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def reference() -> str:
    blocks = []
    for args in [[], *[[name] for name in cli.list_commands(click.Context(cli))]]:
        out = CliRunner().invoke(cli, [*args, "--help"], prog_name="rtml", terminal_width=100).output
        title = " ".join(["rtml", *args])
        blocks.append(f"## `{title}`\n\n```text\n{out.rstrip()}\n```\n")
    return "\n".join(blocks)


def updated(readme: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{reference()}{END}", readme)


if __name__ == "__main__":
    text = REFERENCE.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else "docs/cli.md is stale: run `make docs`")
    REFERENCE.write_text(new)
