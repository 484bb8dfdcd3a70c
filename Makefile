# Two commands do everything on a fresh machine: `make run` (the Gradio demo on the embedded tiny model) and
# `make test` (the test suite). Both create or refresh the virtual environment at .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := build/uni-moe-tiny-random
PORT ?= 7860
VLLM_PORT ?= 8000
CHROMIUM := /usr/bin/chromium

.PHONY: run smoke serve test test-compat compat-venvs test-slow test-vllm quality style benchmarks benchmark-serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU wheel of torch: any other version pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# the dev extra brings uv, which makes the venvs of tests/test_version_matrix.py
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# serves demo/app.py on checkpoints/uni-moe-tiny and prints its URL (http://127.0.0.1:$(PORT)/); Ctrl-C stops it
run: $(STAMP)
	$(BIN)/python demo/app.py --host 127.0.0.1 --port $(PORT)

# serves checkpoints/uni-moe-tiny with vLLM's OpenAI-compatible server on http://127.0.0.1:$(VLLM_PORT)/v1 (CPU,
# float32); makes the vLLM venv build/venvs/vllm first (about 3 GB; seconds when current). Ctrl-C stops it
serve: $(STAMP)
	$(BIN)/python -m serving.serve --port $(VLLM_PORT)

# builds the random tiny model, exports it as a Hub folder and loads it back through the Auto classes
smoke: $(STAMP)
	$(BIN)/python -m hub_export.build --preset tiny --out $(TINY) --check --overwrite

# the whole suite; tests/test_version_matrix.py runs tests/compat/check_version.py in the venv of each transformers
# version of its matrix (reports and a version x check table in build/compat/)
test: $(STAMP) $(CHROMIUM) compat-venvs
	$(BIN)/python -m pytest -q -rs

# the transformers version matrix alone (build/compat/matrix.md: the version x check table)
test-compat: $(STAMP) compat-venvs
	$(BIN)/python -m pytest -q -rs tests/test_version_matrix.py

# one venv per transformers version under build/venvs/tf-<version>, made with uv where its stamp is missing or stale
# (seconds; every test that runs other transformers versions finds them there). A failure here does not stop the
# tests: tests/test_version_matrix.py tries again and reports it per version.
compat-venvs: $(STAMP)
	-$(BIN)/python -m tests.compat.venvs

# Debian's chromium for tests/demo/test_demo_browser.py (skipped, with its reason, where it is missing)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && apt-get install -y --no-install-recommends chromium; \
	else \
		echo "$(CHROMIUM) is missing: tests/demo/test_demo_browser.py will be skipped. Install it as root with" \
			"'apt-get install chromium' (Debian / Ubuntu), then run make test again."; \
	fi

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# vLLM serving (tests/serving/test_vllm.py, slow): makes the vLLM venv, then checks vLLM's greedy tokens against transformers
test-vllm: $(STAMP)
	$(BIN)/python -m serving.venv
	$(BIN)/python -m pytest -q -rs -m slow tests/serving/test_vllm.py

quality: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

style: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# each appends (or replaces) its section of benchmarks/RESULTS.md; run them on an otherwise idle machine
benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.moe_block --out benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.generate --out benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.train --out benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.quantize --out benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.convert --out benchmarks/RESULTS.md

# vLLM's server against sequential and batched transformers generate (makes the vLLM venv first)
benchmark-serve: $(STAMP)
	$(BIN)/python -m serving.venv
	$(BIN)/python -m benchmarks.serve --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) build

.PHONY: lmms-eval-venv test-lmms-eval

# the lmms-eval venv at build/venvs/lmms-eval (lmms-eval requires torchvision and av<16, which do not fit .venv)
lmms-eval-venv: $(STAMP)
	$(BIN)/python -m modeling_unimoe.evaluation.venv

# lmms-eval's offline run of the synthetic tasks on checkpoints/uni-moe-tiny, checked against training.evaluate
test-lmms-eval: lmms-eval-venv
	$(BIN)/python -m pytest -q -m slow tests/evaluation/test_lmms_eval.py
