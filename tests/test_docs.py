"""The docs must not drift from the code: the CLI reference is generated from --help, and
every test the guarantees page cites exists."""

import re
from pathlib import Path

from tools.cli_reference import REFERENCE, updated

DOCS = Path(__file__).resolve().parent.parent / "docs"
TESTS = Path(__file__).resolve().parent


def test_the_cli_reference_matches_help():
    text = REFERENCE.read_text()
    assert "<!-- cli-reference:start -->" in text
    assert updated(text) == text, "docs/cli.md is stale: run `make docs`"


def test_every_test_the_guarantees_page_cites_exists():
    text = (DOCS / "guarantees.md").read_text()
    defined = {f.name: set(re.findall(r"^def (test_\w+)", f.read_text(), re.M)) for f in TESTS.glob("test_*.py")}
    everywhere = set().union(*defined.values())
    cited = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+\*?)`", text)
    assert len(cited) > 30
    for file, name in cited:
        names = defined.get(file, set()) if file else everywhere
        if name.endswith("*"):
            assert any(n.startswith(name[:-1]) for n in names), f"{file}::{name}"
        else:
            assert name in names, f"{file or 'tests'}::{name} is cited in docs/guarantees.md but not defined"
