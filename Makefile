# hgbench: `make bench` runs the default suite, `make test` the test suite; both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup bench test list clean

setup: $(STAMP)

# Re-runs only when the project's dependencies change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m harness run default

test: $(STAMP)
	$(PY) -m pytest -q

list: $(STAMP)
	$(PY) -m harness list

clean:
	rm -rf $(VENV) build *.egg-info
