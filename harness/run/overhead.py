"""Benchmark (not a test): the harness's own overhead on a hyper-step.

The same hyper-step is timed as the runner times it (`measure.time_steps`: a clock reading
around each step, interleaved with the plain and inner steps) and in a bare loop (one clock
reading around `steps` hyper-steps), in alternating blocks in one process so that machine
drift hits both. Means are compared with means (the runner reports medians, which drop the
outliers a mean keeps); the medians over blocks are printed. Run: `hgbench overhead [--backbone resnet18] [--estimators unroll evograd]`.
"""
from __future__ import annotations

import statistics
import time

import torch

from harness.measure.passes import time_steps
from harness.plan.suite import build_suite
from harness.run.cell_process import probe_trainer


def overhead(estimator: str, backbone: str, width: int, blocks: int, steps: int) -> dict[str, float]:
    cell = build_suite({"workloads": [{"name": "mwn", "backbone": backbone, "params": {"width": width}}],
                        "estimators": [estimator], "train_steps": 0}).cells[0]
    device = torch.device("cpu")
    trainer = probe_trainer(cell, device, warmup_steps=3)
    harness_means, harness_medians, bare_means = [], [], []
    for _ in range(blocks):
        hyper = time_steps(trainer, device, steps)["hyper"]
        harness_means.append(hyper.mean)
        harness_medians.append(hyper.median)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.hyper_step()
        bare_means.append((time.perf_counter() - t0) / steps)
    h, b = statistics.median(harness_means), statistics.median(bare_means)
    return {"harness_hyper_s": h, "bare_hyper_s": b, "overhead": h / b - 1,
            "harness_median_s": statistics.median(harness_medians)}
