# usis: `make demo` trains on the embedded synthetic data (CPU, < 15 min); `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo
SHELL  := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: install test lint demo bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; pip resolves torch/torchvision from what the machine offers.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(BIN)/python -c "import usis, torch, torchmetrics" || (echo "install failed" && exit 1)
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: install
	$(BIN)/python -m usis.demo --out $(DEMO_OUT)

bench: install
	$(BIN)/python benchmarks/train_step.py --preset synthetic --json

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
