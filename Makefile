# Two commands on a fresh machine with Python >= 3.11:
#   make demo   runs the main job
#   make test   runs every check (format, lint, types, tests)
# Each creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("sluicegate needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sluicegate demo

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/check

check: test

bench: $(STAMP)
	$(PY) -m sluicegate bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
