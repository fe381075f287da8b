# Set-up and entry points. `make test` and `make demo` create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test demo gpu-check clean

setup: $(STAMP)

# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

demo: $(STAMP)
	$(BIN)/hyperattn demo --out out/demo

# On a CUDA machine: every kernel against the reference at realistic sizes.
gpu-check: $(STAMP)
	$(BIN)/python -m hyperattn.testing.gpu

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
