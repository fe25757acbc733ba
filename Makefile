# The two commands a newcomer needs: `make run` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench soak demo clean wrk

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/carinho-outbox dev

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

# The whole stack with local stand-in receivers and a day of events (carinho_outbox/demo.py).
demo: install
	$(BIN)/python -m carinho_outbox.demo

# Benchmarks (issue 7): the bench extra (peers, profiler) and wrk, Debian's HTTP load generator.
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,embedded,bench]'
	@touch $(BENCH_STAMP)

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wrk; \
	  else echo "wrk is missing: sudo apt-get install -y wrk" >&2; exit 1; fi; }

bench: install $(BENCH_STAMP) wrk
	$(BIN)/python -m carinho_outbox.bench

soak: install $(BENCH_STAMP)
	$(BIN)/python -m carinho_outbox.bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
