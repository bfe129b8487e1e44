"""hgbench: a benchmarking and profiling harness for hypergradient estimators."""

__version__ = "0.1.0"
