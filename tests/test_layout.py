"""The code's layering, as CONTRIBUTING.md describes it: imports go downwards only, a stage
never imports another stage, and `rtml --help` does not import the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtml_cli"

# lower imports nothing above it; a module may import its own layer, except the stages
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "log": 1,
    "kafka": 1,
    "logs": 1,
    "schema": 1,
    "config": 1,
    "beat": 2,
    "build_state": 2,
    "checkpoint": 2,
    "models": 2,
    "ridge": 2,
    "trading": 2,
    "stats": 2,
    "sources": 2,
    "learner": 3,
    "inputs": 3,
    "serving": 3,
    "ingest": 4,
    "features": 4,
    "train": 4,
    "predict": 4,
    "backtest": 4,
    "archive": 4,
    "report": 5,
    "status": 5,
    "run": 5,
    "ui": 5,
    "cli": 6,
    "__main__": 7,
    "__init__": 0,
}
STAGE = 4


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rtml_cli"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from rtml_cli import x
                found.update(alias.name for alias in node.names if alias.name in LAYERS)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rtml_cli."))
    return found


def test_imports_go_downwards_and_no_stage_imports_another():
    files = list(PACKAGE.rglob("*.py"))
    assert {_module(p) for p in files} <= set(LAYERS), "a new module needs its place in LAYERS"
    wrong = []
    for path in files:
        me = _module(path)
        for other in _imports(path) - {me}:
            if LAYERS[other] > LAYERS[me] or (LAYERS[other] == LAYERS[me] == STAGE):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, wrong


def test_help_does_not_import_the_heavy_libraries():
    heavy = "{'polars', 'duckdb', 'river', 'numpy'}"
    code = f"import sys; from rtml_cli.cli import cli; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
