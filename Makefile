# unlearnd: `make run` serves, `make test` tests. Both install into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: help run dashboard lint test test-unit bench-quality bench-clip bench-gate bench-serve clean
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(INSTALLED)

run: $(INSTALLED)  ## start Redis, API, workers and the demo model in the foreground
	$(PY) -m unlearnd run

DASHBOARD_PORT ?= 9181
dashboard: $(INSTALLED)  ## rq-dashboard on 127.0.0.1:9181 (DASHBOARD_PORT) for the queue of `make run` (same UNLEARND_* settings)
	@url=$$($(PY) -c 'from unlearnd.settings import get_settings; print(get_settings().effective_redis_url)') && \
	echo "rq-dashboard: http://127.0.0.1:$(DASHBOARD_PORT)  (Redis $$url; Ctrl-C stops it)" && \
	exec $(VENV)/bin/rq-dashboard --bind 127.0.0.1 --port $(DASHBOARD_PORT) --redis-url "$$url" --json

lint: $(INSTALLED)  ## ruff (rules in pyproject.toml) on the tree, mypy on unlearning/ and models_store/
	$(PY) -m ruff check .
	$(PY) -m mypy

TEST_PROCESSES ?= 2
test: $(INSTALLED) lint  ## lint, then the whole test suite: unit and API tests in TEST_PROCESSES processes, then integration
	$(PY) -m pytest -m "not integration" -n $(TEST_PROCESSES)
	$(PY) -m pytest -m integration

test-unit: $(INSTALLED)  ## run only the fast tests (unit and API), in TEST_PROCESSES processes
	$(PY) -m pytest -m "not integration" -n $(TEST_PROCESSES)

bench-quality: $(INSTALLED)  ## unlearning quality benchmark against retraining (docs/benchmarks.md)
	$(PY) -m bench.quality

bench-gate: $(INSTALLED)  ## serving cost of gated vs universal forget vectors (docs/benchmarks.md)
	$(PY) -m bench.gate_cost

bench-serve: $(INSTALLED)  ## serving speed: unlearnd vs LitServe vs the in-process limit, intake (docs/benchmarks.md)
	$(PY) -m bench.serve

bench-clip: $(INSTALLED)  ## forget vectors with and without clipping x + δ to [0, 1] (docs/benchmarks.md)
	$(PY) -m bench.clip

clean:  ## remove the virtual environment and local state
	rm -rf $(VENV) .unlearnd
