# hsad-scale: set up, demo, test, benchmark. Everything runs inside .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch (an unpinned torch pulls a multi-GB CUDA build); on a GPU machine
# run e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

## demo: generate a 512 x 512 x 200 scene and run RX on it (outputs in demo/)
demo: setup
	mkdir -p demo
	$(VENV)/bin/hsad synth demo/scene.zarr --size 512x512 --bands 200 --seed 0 --overwrite
	$(VENV)/bin/hsad detect demo/scene.zarr --method rx --out demo/run-rx --overwrite
	@echo "open demo/run-rx/map.png, demo/run-rx/roc.png; numbers in demo/run-rx/metrics.json"

## test: the whole test suite (real scenes from ../shared/data/had)
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/rx_vs_spy.py

clean:
	rm -rf demo .pytest_cache
