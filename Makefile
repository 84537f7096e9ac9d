# pbi_bluesky: every target builds/updates .venv from pyproject.toml first.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/pbi demo --out demo_output

lint: venv
	$(VENV)/bin/ruff check pbi_bluesky sim_iocs tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/bench_reduction.py

clean-venv:
	rm -rf $(VENV)
