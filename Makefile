# The two commands a newcomer needs: `make run` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench soak demo clean

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

bench: install
	$(BIN)/python -m carinho_outbox.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
