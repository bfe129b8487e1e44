"""Benchmark (not a test): issue 25's goal for the mixed-mode unroll, measured on this machine.

For MW-Net ResNet18 and ResNet34 (width 16, batch 32) at T=5 and T=10, each mixed-mode
backend against `func` (reverse-over-reverse) by `harness.run.paired`: the hyper-step's
live-byte peak read once each, then paired alternating timing, in ONE fresh process per
comparison (live-bytes mode must be set before any tensor exists). Before them, per
backbone, what one inner step costs each way, timed interleaved on one problem: the
first-order gradient the forward unroll takes, the sweep's products by dual tensors and by
torch.func.jvp, and reverse-over-reverse (forward, kept backward, double backward).

    .venv/bin/python -m tests.benchmarks.mixed_goal [--quick]     # JSON lines on stdout

Goal (issue 25): mixed / func time <= 1.10 with memory <= 0.50.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

WIDTH, BATCH = 16, 32


def workload(backbone: str) -> dict:
    return {"name": "mwn", "backbone": backbone, "params": {"width": WIDTH, "batch_size": BATCH}}


def one_comparison(backbone: str, T: int, backend: str, rounds: int) -> dict:
    from harness.measure.memory import AllocatorMode
    assert AllocatorMode.for_live_bytes()  # before any tensor exists
    from harness.run.paired import paired

    r = paired(workload(backbone), f"unroll:T={T},backend={backend}", f"unroll:T={T},backend=func",
               rounds=rounds, memory=True)
    return {"kind": "paired", "backbone": backbone, "T": T, "backend": backend, "rounds": rounds, **r}


def step_costs(backbone: str, repeats: int = 5) -> dict:
    """Per inner step, ms (median of `repeats`, interleaved)."""
    import torch

    from estimators.functional import (CommonDraws, detached, grads, leaf_copy, scratch_buffers,
                                       second_order_products, vjp_grads)
    from estimators.mixed_mode import SWEEPS, _Step
    from harness.plan.suite import build_suite
    from harness.run.cell_process import probe_trainer

    cell = build_suite({"workloads": [workload(backbone)], "estimators": ["plain"], "train_steps": 0,
                        "warmup_steps": 1}).cells[0]
    trainer = probe_trainer(cell, torch.device("cpu"))
    problem, batch = trainer.problem, trainer.train_stream.peek(1)[0]
    w, lam, buf = detached(problem.weights), detached(problem.hparams), scratch_buffers(problem.buffers)
    a = {k: torch.randn_like(v) for k, v in w.items()}
    step = _Step(w, buf, CommonDraws(), batch)

    def first_order():
        wl = leaf_copy(w)
        grads(problem.train_loss(wl, buf, lam, batch), wl)

    def reverse_over_reverse():
        wl, ll = leaf_copy(w), leaf_copy(lam)
        g = grads(problem.train_loss(wl, buf, ll, batch), wl, create_graph=True)
        vjp_grads(g, {**{("w", k): v for k, v in wl.items()}, **{("h", k): v for k, v in ll.items()}}, a)

    calls = {"first_order_gradient": first_order,
             "fwad_products": lambda: second_order_products(problem, w, buf, lam, batch, a),
             "jvp_products": lambda: SWEEPS["jvp"].products(problem, step, lam, a),
             "reverse_over_reverse_step": reverse_over_reverse}
    times = {k: [] for k in calls}
    for _ in range(repeats + 1):
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {"kind": "step_ms", "backbone": backbone,
            **{k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.mixed_goal", "--child", *args],
                         capture_output=True, text=True)
    if out.returncode:
        return {"kind": "failed", "args": args, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        r = step_costs(rest[0]) if kind == "steps" else one_comparison(rest[0], int(rest[1]), rest[2], int(rest[3]))
        print(json.dumps(r, default=list))
        return
    quick = "--quick" in argv
    plan = [("steps", bb) for bb in ("resnet18", "resnet34")]
    for bb in ("resnet18", "resnet34"):
        for T in (5, 10):
            plan.append(("paired", bb, str(T), "mixed", "3" if quick else "7"))
            plan.append(("paired", bb, str(T), "mixed-jvp", "3" if quick else "5"))
    plan.append(("paired", "resnet18", "5", "mixed-linearize", "3"))  # (~7 s a step to trace)
    for job in plan:
        print(json.dumps(_child(*job), default=list), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
