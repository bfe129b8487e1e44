"""Benchmark (not a test): the harness's own overhead on a hyper-step.

The same hyper-step is timed as the runner times it (`measure.time_steps`: a clock reading
around each step, interleaved with the plain and inner steps) and in a bare loop (one clock
reading around `steps` hyper-steps), in alternating blocks in one process so that machine
drift hits both. Means are compared with means (the runner reports medians, which drop the
outliers a mean keeps); the medians over blocks are printed. Run: `python -m harness.run.overhead [--backbone resnet18] [--estimators unroll evograd]`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.measure.passes import time_steps
from harness.plan.suite import build_suite
from harness.run.cell import probe_trainer


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--estimators", nargs="+", default=["unroll", "evograd"])
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    for est in args.estimators:
        r = overhead(est, args.backbone, args.width, args.blocks, args.steps)
        print(f"{est:10s} {args.backbone} width {args.width}: harness mean {r['harness_hyper_s'] * 1e3:.2f} ms "
              f"(median, as reported: {r['harness_median_s'] * 1e3:.2f} ms), bare loop mean "
              f"{r['bare_hyper_s'] * 1e3:.2f} ms, overhead {r['overhead'] * 100:+.2f}%")


if __name__ == "__main__":
    main()
