# Everything builds its own .venv: `make demo` runs the product, `make test` the whole check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers: most tests wait on a broker, a subprocess or a browser, so two
# share 2 cores well; the tests marked xdist_group("cpu-heavy") run on one worker in turn
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test test-all lint typecheck unit venv system-deps clean bench evaluate

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,confluent]'
	@touch $(STAMP)

venv: $(STAMP)

# Headless Chromium for the dashboard's browser test (Debian packages).
system-deps:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { echo "installing chromium + chromium-driver (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || { echo "could not install chromium: run 'apt-get install chromium chromium-driver' as root"; exit 1; }; }

demo: $(STAMP)
	$(BIN)/streamwatch demo

lint: $(STAMP)
	$(BIN)/ruff check streamwatch simulators dashboards tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(PYTEST)

# CI's suite leaves out the tests marked slow (variants also covered elsewhere, see the
# README), to come nearer ~10 minutes on 2 cores; `make test-all` runs them too
test: $(STAMP) system-deps lint typecheck
	$(PYTEST) -m "not slow" --junitxml=test-results/junit.xml

test-all: $(STAMP) system-deps lint typecheck
	$(PYTEST) --junitxml=test-results/junit.xml

bench: $(STAMP)
	$(BIN)/streamwatch bench kafka --json bench-results.json

evaluate: $(STAMP)
	$(BIN)/streamwatch evaluate icu --json eval-results.json

clean:
	rm -rf $(VENV) test-results .pytest_cache .mypy_cache .ruff_cache
