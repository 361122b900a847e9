# Everything runs from a .venv inside the checkout; `make setup` is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup test demo lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh scripts/prebuild_deepspeed_ops.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU-only machines get the pinned CPU wheel before anything can pull a CUDA build;
	# a machine with CUDA keeps whatever torch the user already has.
	bash scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	# DeepSpeed JIT-compiles its CPU comm op on first use (~45 s): build it now, not in the first run.
	$(BIN)/python scripts/prebuild_deepspeed_ops.py
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	# The slowest tests listed at the end: the suite should stay under ~20 minutes.
	$(BIN)/python -m pytest -q --durations=15 tests

demo: setup
	$(BIN)/raydistill demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
