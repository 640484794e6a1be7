# rtml: `make demo` and `make test` work as the first commands on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("rtml needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# For now the demo is a paced synthetic market ingested into ./data/demo; later stages join it.
demo: install
	$(BIN)/rtml ingest --source synthetic --speed 300 --duration 15 --data-dir data/demo

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

docs: install
	$(BIN)/python tools/cli_reference.py
