# hgbench: `make bench` runs the default suite, `make test` the test suite; both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup bench cost overhead test list clean

setup: $(STAMP)

# Re-runs only when the project's dependencies change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m harness run default

# Cost only (time, memory, FLOPs x plain step) at ResNet10/18/34; no meta-training.
cost: $(STAMP)
	$(PY) -m harness run cost

# Benchmark of the harness's own timing overhead (ResNet18, unroll and evograd).
overhead: $(STAMP)
	$(PY) -m harness.overhead

test: $(STAMP)
	$(PY) -m pytest -q

list: $(STAMP)
	$(PY) -m harness list

clean:
	rm -rf $(VENV) build *.egg-info
