# conceptlens: every target sets up .venv itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the runtime (what `make demo` needs), then the dev extra on top (tests, benchmarks, docs, linters):
# a fresh clone's demo does not wait for transformers, timm, mkdocs, captum, quantus, playwright
STAMP := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
# no .pyc compilation of every installed file (torch alone has thousands): modules compile when imported
PIP := $(PY) -m pip install --quiet --no-compile

.PHONY: demo test bench lint docs docs-figures dist clean venv

venv: $(DEV)

# README.md too: the package metadata (PKG-INFO) embeds it, so an edited README re-installs the package.
$(STAMP): pyproject.toml README.md
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) -e .
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PIP) -e ".[dev]"
	touch $(DEV)

demo: $(STAMP)
	$(VENV)/bin/conceptlens demo --out report --table bench/results/demo.md --readme README.md

test: $(DEV)
	$(PY) -m pytest -q tests

bench: $(DEV)
	$(VENV)/bin/conceptlens bench all

# The docs site (site/index.html), built with --strict: a broken link, a missing bench/results file or a public
# name missing from the API reference fails it (scripts/docs_hooks.py). tests/test_docs.py runs the same build.
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The pictures of docs/concepts.md (docs/img/*.png), from the bundled model and photos.
docs-figures: $(DEV)
	$(PY) scripts/docs_figures.py

# A wheel and an sdist in dist/, checked by twine (tests/test_packaging.py builds them too).
dist: $(DEV)
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lint: $(DEV)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) report build dist site *.egg-info src/*.egg-info

# fit every concept method on the GPU and compare with the CPU (skipped, exit 0, without a GPU)
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py
