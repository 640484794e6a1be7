"""The README's CLI reference is generated from --help and must not drift from it."""

from tools.cli_reference import README, updated


def test_readme_cli_reference_matches_help():
    text = README.read_text()
    assert "<!-- cli-reference:start -->" in text
    assert updated(text) == text, "the README CLI reference is stale: run `make docs`"
