# conceptlens: every target sets up .venv itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint docs docs-figures dist clean venv

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

# The docs site (site/index.html), built with --strict: a broken link, a missing bench/results file or a public
# name missing from the API reference fails it (scripts/docs_hooks.py). tests/test_docs.py runs the same build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The pictures of docs/concepts.md (docs/img/*.png), from the bundled model and photos.
docs-figures: $(STAMP)
	$(PY) scripts/docs_figures.py

# A wheel and an sdist in dist/, checked by twine (tests/test_packaging.py builds them too).
dist: $(STAMP)
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) report build dist site *.egg-info src/*.egg-info

# fit every concept method on the GPU and compare with the CPU (skipped, exit 0, without a GPU)
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py
