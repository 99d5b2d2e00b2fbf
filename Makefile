# raycontrast developer entry points. `make test` and `make train` do all set-up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: help venv install test lint format train tune docs bench bench-contrast bench-bank bench-bank-scale bench-real-scale gpu-check clean

help:
	@echo "make train           create .venv, install, run experiments/synthetic.yaml on a local Ray instance"
	@echo "make test            create .venv, install dev extras, run ruff and the test suite"
	@echo "make tune            run the smoke sweep experiments/sweeps/synthetic_smoke.yaml"
	@echo "make docs            build the documentation site (mkdocs --strict) into site/"
	@echo "make bench-contrast  contrast-loss and enqueue benchmark -> benchmarks/results/contrast.json"
	@echo "make bench-bank      memory-bank exchange benchmark -> benchmarks/results/bank.json"
	@echo "make bench-bank-scale  bank exchange at 2..16 simulated workers -> benchmarks/results/bank_scale.json"
	@echo "make bench-real-scale  the paper's HRNet-W48 configs at full resolution -> benchmarks/results/real_scale.json"
	@echo "make gpu-check       GPU/nccl/amp/SyncBN check (skips without CUDA) -> benchmarks/results/gpu_check.json"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

train: $(STAMP)
	$(BIN)/raycontrast train $(ARGS)

tune: $(STAMP)
	$(BIN)/raycontrast tune experiments/sweeps/synthetic_smoke.yaml $(ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: bench-contrast bench-bank

bench-contrast: $(STAMP)
	$(BIN)/python benchmarks/bench_contrast.py $(ARGS)

bench-bank: $(STAMP)
	$(BIN)/python benchmarks/bench_bank.py $(ARGS)

bench-bank-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_bank_scale.py $(ARGS)

bench-real-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_real_scale.py $(ARGS)

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis build site *.egg-info
