# hgbench: `make bench` runs the default suite, `make test` the test suite; both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup bench gpu-check cost scaling predict-paper scaling-transformer sensitivity overhead report-scale test pytest-bench list clean

setup: $(STAMP)

# Re-runs only when the project's dependencies change. pip compiles one file at a time, so it
# installs with --no-compile and compileall then compiles on every core (3m33s -> 2m49s on a
# fresh clone on the 2-core machine). Compiling is needed:
# where PYTHONDONTWRITEBYTECODE is set (as on CI) nothing compiled at import is kept, and every
# process would compile torch again (and print third-party SyntaxWarnings on its stderr).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e ".[dev,ray]"
	$(PY) -W ignore -m compileall -qq -j 0 $(VENV)/lib harness estimators workloads tests || \
		true  # as pip does, skip files newer than this Python (torch's py312_intrinsics.py)
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m harness run default

# On a CUDA machine: the CUDA-only tests and harness/plan/suites/gpu-check.yaml on the GPU
# (about 6 minutes on one H200 is the aim; not yet run on one); without CUDA the same suite
# on the CPU at reduced size, said in one line. One run folder with its report.
gpu-check: $(STAMP)
	$(PY) -m harness gpu-check

# Cost only (time, memory, FLOPs x plain step) at ResNet10/18/34; no meta-training.
cost: $(STAMP)
	$(PY) -m harness run cost

# Cost only at ResNet10/18/34 on mwn and lft, with the memory frontier (GPU: add
# ARGS="--set device=cuda").
scaling: $(STAMP)
	$(PY) -m harness run scaling $(ARGS)

# Which estimator fits on a 12/24/40/80 GB GPU at the papers' sizes: predicted, none run.
predict-paper: $(STAMP)
	$(PY) -m harness predict paper-sizes --device cuda $(ARGS)

# Cost only on MetaXL's transformer: 2/6/12 layers at hidden 256 and XLM-R base at 128 tokens.
scaling-transformer: $(STAMP)
	$(PY) -m harness run scaling-transformer $(ARGS)

# Fidelity against each knob (EvoGrad K/sigma/tau, FD step, unroll T, Neumann terms) on
# toy1d and MW-Net, every reference, a figure per knob: about 8 minutes on the CPU.
sensitivity: $(STAMP)
	$(PY) -m harness run sensitivity $(ARGS)

# Benchmark of the harness's own timing overhead (ResNet18, unroll and evograd).
overhead: $(STAMP)
	$(PY) -m harness overhead

# Benchmark of `hgbench report` on 20,000 rows (ROWS=... to change).
ROWS ?= 20000
report-scale: $(STAMP)
	$(PY) -m tests.benchmarks.report_scale --rows $(ROWS)

test: $(STAMP)
	$(PY) -m pytest -q

# One hyper-step per estimator x backbone under pytest-benchmark (width 8; add
# BENCH_ARGS=--full-width for width 64), saved as JSON and rendered by `hgbench report`.
BENCH_JSON ?= reports/pytest-bench.json
pytest-bench: $(STAMP)
	mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest tests/benchmarks -o python_files='bench_*.py' -q \
		--benchmark-json=$(BENCH_JSON) $(BENCH_ARGS)
	$(PY) -m harness report $(BENCH_JSON)

list: $(STAMP)
	$(PY) -m harness list

clean:
	rm -rf $(VENV) build *.egg-info
