# Two commands do everything on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create or refresh the virtual environment at .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := build/uni-moe-tiny-random

.PHONY: run test test-slow quality style benchmarks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU wheel of torch: any other version pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m hub_export.build --preset tiny --out $(TINY) --check

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

quality: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

style: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.moe_block
	$(BIN)/python -m benchmarks.generate

clean:
	rm -rf $(VENV) build
