# pbi_bluesky: every target builds/updates .venv from pyproject.toml first.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-offline test lint docs bench bench-models model clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[all,dev]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/pbi demo --out demo_output

demo-offline: venv
	$(VENV)/bin/pbi demo --offline --out demo_output/offline

lint: venv
	$(VENV)/bin/ruff check pbi_bluesky sim_iocs tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	@# Debian's chromium for the review page's browser test (apt lists refreshed only if needed)
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "WARNING: chromium not installed: tests/review/test_review_browser.py will be skipped"
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30

# The documentation site (Sphinx, warnings are errors) into build/docs.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[all,dev,docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs build/docs

bench: venv
	$(PY) benchmarks/bench_reduction.py

bench-models: venv
	$(PY) benchmarks/bench_models.py

# Rebuild the default model bundle shipped in the package (simulated PS/PMMA, seeded).
model: venv
	rm -rf build/model_training
	$(VENV)/bin/pbi data simulate --out build/model_training --normals 100 --anomalies 0 --seed 0
	$(VENV)/bin/pbi model train --manifest build/model_training/manifest.csv \
		--out pbi_bluesky/data/default_model --seed 0 --epochs 80

clean-venv:
	rm -rf $(VENV)
