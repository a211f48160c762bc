# The two commands of this kit: `make study` and `make test`.
# Both create the virtual environment (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= demo
DATA_ROOT ?=
ARGS ?=

.PHONY: study test lint bench env clean-runs

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name gkd --display-name "Python (gkd)"
	@touch $@

env: $(VENV)/.installed

# The whole study with one profile: teacher, every student arm, analysis, report.
study: $(VENV)/.installed
	$(PY) -m gkd_lib.pipeline --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gkd_lib tests
	$(VENV)/bin/ruff format --check gkd_lib tests

bench: $(VENV)/.installed
	$(PY) -m gkd_lib.bench $(ARGS)

clean-runs:
	rm -rf runs
