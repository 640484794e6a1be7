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

# The pipeline so far on the simulated market, in ./data/demo: six hours of history, its
# features, then a live-looking market (300x real time) with `rtml features --follow` beside it.
DEMO := data/demo
demo: install
	rm -rf $(DEMO)
	$(BIN)/rtml ingest --max-ticks 300000 --data-dir $(DEMO)
	$(BIN)/rtml features --data-dir $(DEMO)
	$(BIN)/rtml features --follow --data-dir $(DEMO) --json > $(DEMO)-features.json & pid=$$!; \
	$(BIN)/rtml ingest --speed 300 --duration 15 --data-dir $(DEMO); \
	sleep 1; kill -INT $$pid; wait $$pid; \
	$(BIN)/python -c 'import json, sys; s = json.load(open(sys.argv[1])); print("features --follow:", s["bars_emitted"], "bars,", s["examples_emitted"], "examples,", s["late_ticks"], "late ticks while the market ran")' $(DEMO)-features.json

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

docs: install
	$(BIN)/python tools/cli_reference.py
