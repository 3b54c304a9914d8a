# conceptlens: every target sets up .venv itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean venv

venv: $(STAMP)

# README.md too: the package metadata (PKG-INFO) embeds it, so an edited README re-installs the package.
$(STAMP): pyproject.toml README.md
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/conceptlens demo --out report --table bench/results/demo.md --readme README.md

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/conceptlens bench all

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) report build *.egg-info src/*.egg-info

# fit every concept method on the GPU and compare with the CPU (skipped, exit 0, without a GPU)
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py
