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

# What CI runs (.ci/run): lint and types, the docs build, then every test, on two workers
# (most tests wait on subprocesses: two at once take 0.6 of the time, also on a busy machine).
test: lint docs-build
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The tests not marked slow (no kill -9 chaos, no long follow runs): quick feedback.
test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The pipeline on the simulated market, in ./data/demo: two weeks of history (12.6M trades,
# many regimes) written as fast as it goes; then `rtml run` starts the four stages as
# supervised processes, live, on a market that goes on at 3000x real time for 60 s (about two
# more days of market, several regime changes): features, training and predictions catch up on
# the history and then follow, on one dashboard. Last, a backtest of all of it: what keeping the
# model fresh is worth, and whether it is significant, with a report. About three minutes.
DEMO := data/demo
demo: install
	rm -rf $(DEMO) $(DEMO)-report
	$(BIN)/rtml ingest --max-ticks 12600000 --data-dir $(DEMO)
	$(BIN)/rtml run --speed 3000 --duration 60 --data-dir $(DEMO)
	$(BIN)/rtml backtest --refresh 1,10,60,240,1440,never --warmup 1000 --data-dir $(DEMO) --report $(DEMO)-report
	@echo "the backtest's report: $(DEMO)-report/report.html; the stages' logs: $(DEMO)/logs/"

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/kafka.py

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
