# The front door: `make run` and `make test` are all a fresh machine with Python 3.11+ needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-pg15 ha-test soak lint fmt bench bench-ha bench-all bench-bulk bench-stream wrk clean

install: $(STAMP)

# pip's output goes to $(LOG), shown only when something fails
LOG    := $(VENV)/install.log

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing Coupon and its dependencies into $(VENV) (log: $(LOG)) ..."
	@{ $(BIN)/python -m pip install --upgrade pip \
	  && $(BIN)/python -m pip install -c constraints.txt -e '.[dev]'; } > $(LOG) 2>&1 \
	  || { tail -n 30 $(LOG); echo "make install: pip failed, the whole log is $(LOG)"; exit 1; }
	@touch $(STAMP)

run: install          ## the service with demo data on the embedded PostgreSQL
	@$(BIN)/coupon demo

test: install         ## the whole suite against a real PostgreSQL
	$(BIN)/python -m pytest

test-pg15: install    ## the database-facing tests again on Debian's PostgreSQL 15 (installed and started)
	.ci/with-postgres-15 $(BIN)/python -m pytest -q tests/unit tests/integration \
		--deselect tests/integration/test_dashboard_browser.py

ha-test: install      ## 3 etcd + 3 Patroni nodes: failovers under load, COUPON_HA_RUNS times, targets held
	COUPON_HA_RUNS=$${COUPON_HA_RUNS:-5} COUPON_HA_TARGETS=1 $(BIN)/python -m pytest -s \
		--timeout=3600 tests/ha

soak: install         ## the long reliability runs; figures in test-artifacts/reliability.jsonl
	rm -f test-artifacts/reliability.jsonl
	COUPON_SOAK=1 $(BIN)/python -m pytest --timeout=1800 tests/reliability
	cat test-artifacts/reliability.jsonl

lint: install
	$(BIN)/ruff check coupon tests loadtest examples
	$(BIN)/ruff format --check coupon tests loadtest examples
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format coupon tests loadtest examples
	$(BIN)/ruff check --fix coupon tests loadtest examples

bench: install wrk    ## pgbench TPC-B, then signed POS traffic (wrk, open loop) on the same PostgreSQL
	$(BIN)/python -m loadtest.bench

bench-ha: install wrk ## make bench on a 3-node Patroni cluster with synchronous replication
	$(BIN)/python -m loadtest.ha

bench-all: bench bench-bulk bench-stream  ## every benchmark; figures go to BENCHMARKS.md by hand

wrk:                  ## the closed-loop HTTP load generator (Debian package)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| (sudo apt-get update -qq && sudo apt-get install -y -qq wrk)

bench-bulk: install   ## 1,000,000 households: import and tranche opening
	$(BIN)/python -m loadtest.bulk --households 1000000

bench-stream: install ## live counters: stream lag, and what 500 SSE clients cost redemptions
	$(BIN)/python -m loadtest.stream

clean:
	rm -rf $(VENV) .coupon-test .test-embedded loadtest/out test-artifacts .hypothesis
