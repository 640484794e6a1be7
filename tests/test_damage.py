"""Damaged state and careless input: clear errors that say what is wrong and what to do."""

from __future__ import annotations

import json

import pytest

from rtml_cli.features import STATE_FILE
from tests.conftest import assert_clean_error


@pytest.fixture
def built(rtml, data_dir):
    assert rtml("ingest", "--max-ticks", "60000", "--json").exit_code == 0
    assert rtml("features", "--json").exit_code == 0
    return data_dir


def test_a_deleted_features_state_is_named_by_every_stage(rtml, built):
    """train used to say the examples "were rebuilt" (nothing was), predict that there was "no
    features log" (there was)."""
    assert rtml("train", "--json").exit_code == 0
    (built / STATE_FILE).unlink()
    for command in ("train", "predict", "backtest"):
        assert_clean_error(rtml(command), f"no {STATE_FILE}", "rtml features --rebuild")
    assert_clean_error(rtml("features"), f"no {STATE_FILE}", "--rebuild")
    assert rtml("features", "--rebuild", "--json").exit_code == 0
    assert rtml("predict", "--json").exit_code == 0


@pytest.mark.parametrize("field, value", [("bars", "many"), ("tick_offset", 1.5), ("max_ts", "late"), ("late", None)])
def test_a_state_field_of_the_wrong_type_is_a_damaged_state(rtml, built, field, value):
    path = built / STATE_FILE
    doc = json.loads(path.read_text())
    doc["symbols"]["BTC/USD"][field] = value
    path.write_text(json.dumps(doc))
    assert_clean_error(rtml("features"), "is damaged", field, "--rebuild")


@pytest.mark.parametrize("spec, fragment", [
    ("../../x:y", "is not module:factory"),
    ("/tmp/evil.py:f", "is not module:factory"),
    ("my_models:not a name", "is not module:factory"),
    ("broken_models:f", "failed: ZeroDivisionError"),
])
def test_a_model_that_is_not_an_importable_name_is_a_clear_error(rtml, built, tmp_path, monkeypatch, spec, fragment):
    (tmp_path / "broken_models.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_clean_error(rtml("train", "--model", spec), fragment)
