# usis: `make demo` trains on the embedded synthetic data (CPU, < 15 min); `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo
NEED_GB ?= 7
# When this make began (before any install): make demo ends within 15 minutes of it.
STARTED := $(shell date +%s)
SHELL  := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: install test lint demo bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; pip resolves torch/torchvision from what the machine offers.
$(STAMP): pyproject.toml
	@# PyTorch (a CUDA build on most machines) takes ~6 GiB: say so up front instead of dying mid-install.
	@if ! { test -x $(BIN)/python && $(BIN)/python -c "import torch" 2>/dev/null; }; then \
	  free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(NEED_GB) ]; then \
	    echo "usis: only $$free GiB free on this disk; installing PyTorch into $(VENV) needs about $(NEED_GB) GiB." >&2; \
	    echo "      Free some space (old clones, stale .venv folders) or run make NEED_GB=0 to try anyway." >&2; \
	    exit 1; \
	  fi; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(BIN)/python -c "import usis, torch, torchmetrics" || (echo "install failed" && exit 1)
	@touch $(STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist), a test file each at a time (its module fixtures built
# once): most tests run one thread and wait on subprocesses, so two workers keep both cores of a 2-core machine
# busy. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: install
	$(BIN)/python -m usis.demo --out $(DEMO_OUT) --started $(STARTED)
	@echo "Paint label maps and generate images in a browser: $(BIN)/usis app --checkpoint $(DEMO_OUT), then open http://127.0.0.1:7860"

bench: install
	$(BIN)/python benchmarks/train_step.py --preset synthetic --json

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
