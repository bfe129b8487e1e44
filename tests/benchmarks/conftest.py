"""`make pytest-bench`: one hyper-step per estimator x backbone under pytest-benchmark.

The cells are the `cost` suite's estimators on Meta-Weight-Net at ResNet10/18/34, at width 8
by default (minutes on a CPU) or the standard width 64 with `--full-width`.
"""
from __future__ import annotations

import pytest

from harness.plan.suite import find_suite, load_suite

SMALL_WIDTH, FULL_WIDTH = 8, 64


def pytest_addoption(parser):
    parser.addoption("--full-width", action="store_true",
                     help="hgbench benchmarks: standard ResNet width 64 instead of 8")


def bench_cells(width: int):
    suite = load_suite(find_suite("cost"), [f"workloads.0.params.width={width}", "name=pytest-bench"])
    return list(suite.cells)


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        width = FULL_WIDTH if metafunc.config.getoption("--full-width") else SMALL_WIDTH
        cells = bench_cells(width)
        metafunc.parametrize("cell", cells, ids=[f"{c.backbone}-{c.label().split('/')[2]}" for c in cells])


@pytest.fixture
def device():
    import torch
    return torch.device("cpu")
