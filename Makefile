# rtml: `make demo` and `make test` work as the first commands on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format docs docs-build demo bench results clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("rtml needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# What CI runs (.ci/run): lint and types, the docs build, then every test.
test: lint docs-build
	$(BIN)/python -m pytest -q

# The tests not marked slow (no kill -9 chaos, no long follow runs): quick feedback.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The pipeline on the simulated market, in ./data/demo: two weeks of history (12.6M trades,
# many regimes), its features, a model trained on them and its predictions; then a
# live-looking market (300x real time) with `rtml features --follow`, `rtml train --follow`
# and `rtml predict --follow` (which swaps each new checkpoint in) running beside it; last, a
# backtest of all of it: what keeping the model fresh is worth, and whether it is significant
# (its report, with charts, in data/demo-report/report.html). About two minutes.
DEMO := data/demo
demo: install
	rm -rf $(DEMO) $(DEMO)-*.json $(DEMO)-report
	$(BIN)/rtml ingest --max-ticks 12600000 --data-dir $(DEMO)
	$(BIN)/rtml features --data-dir $(DEMO)
	$(BIN)/rtml train --data-dir $(DEMO)
	$(BIN)/rtml predict --data-dir $(DEMO)
	$(BIN)/rtml features --follow --data-dir $(DEMO) --json > $(DEMO)-features.json & f=$$!; \
	$(BIN)/rtml train --follow --checkpoint-every 50 --data-dir $(DEMO) --json > $(DEMO)-train.json & t=$$!; \
	$(BIN)/rtml predict --follow --data-dir $(DEMO) --json > $(DEMO)-predict.json & p=$$!; \
	$(BIN)/rtml ingest --speed 300 --duration 15 --data-dir $(DEMO); \
	sleep 2; kill -INT $$f; wait $$f; sleep 1; kill -INT $$t; wait $$t; sleep 1; kill -INT $$p; wait $$p; \
	$(BIN)/python tools/demo_summary.py $(DEMO)-features.json $(DEMO)-train.json $(DEMO)-predict.json
	$(BIN)/rtml checkpoints --data-dir $(DEMO)
	$(BIN)/rtml backtest --refresh 1,10,60,240,1440,never --warmup 1000 --data-dir $(DEMO) --report $(DEMO)-report

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/backtest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build site *.egg-info

# The guides in docs/, built into site/ (offline; warnings are errors). `make docs` first
# regenerates the CLI reference (docs/cli.md) from --help; a test checks it is current.
docs: install
	$(BIN)/python tools/cli_reference.py
	$(MAKE) docs-build

docs-build: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The real-data backtests of docs/results.md (River's SP500Stocks and the simulated market), rerun.
results: install
	$(BIN)/python tools/backtest_results.py
