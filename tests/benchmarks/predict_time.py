"""Benchmark (not a test): where `hgbench predict`'s time model goes wrong, op by op.

For each cost-suite cell at one backbone, a real hyper-step is timed (median of 3 after one),
then run once more with every aten op timed as it runs (a dispatch mode around the kernel
call) beside the time model's figure for the same op (`--time-model roofline` or `kernels`),
summed by op class. If the ops' own times sum to the step's wall time, the error is in the
per-op model, not in off-kernel work; the classes say which ops.

    .venv/bin/python -m tests.benchmarks.predict_time resnet18 [roofline|kernels] [CELL-SUBSTRING ...]
"""
from __future__ import annotations

import collections
import json
import statistics
import sys
import time


def op_class(name: str) -> str:
    if name.startswith("convolution_backward"):
        return "conv_backward"
    if name.startswith("convolution"):
        return "conv_forward"
    if name in ("mm", "addmm", "bmm"):
        return "matmul"
    if "batch_norm" in name:
        return "batch_norm"
    return "elementwise_and_other"


def main(backbone: str, model_name: str = "roofline", *only: str) -> None:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from harness.measure.predict import _NO_KERNEL, TIME_MODELS
    from harness.plan.suite import find_suite, load_suite
    from harness.run.cell_process import probe_trainer

    model = TIME_MODELS[model_name].calibrate()
    print(json.dumps({"model": model_name, "note": model.note}), flush=True)

    class Timed(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.by_class = collections.defaultdict(lambda: [0.0, 0.0, 0])  # measured s, modelled s, calls

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            t0 = time.perf_counter()
            out = func(*args, **kwargs)
            dt = time.perf_counter() - t0
            name = func._overloadpacket.__name__
            if func.namespace == "aten" and name not in _NO_KERNEL:
                ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
                outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
                c = self.by_class[op_class(name)]
                c[0] += dt
                c[1] += model.call_time(func, args, kwargs, ins, outs, out)
                c[2] += 1
            return out

    suite = load_suite(find_suite("cost"), [f"workloads.0.backbone=[{backbone}]"])
    for cell in suite.cells:
        if only and not any(s in cell.label() for s in only) or cell.identity()["estimator"] == "plain":
            continue
        trainer = probe_trainer(cell, torch.device("cpu"))
        walls = []
        for _ in range(4):
            t0 = time.perf_counter()
            trainer.hyper_step()
            walls.append(time.perf_counter() - t0)
        timed = Timed()
        with timed:
            trainer.hyper_step()
        ops = sum(v[0] for v in timed.by_class.values())
        print(json.dumps({"cell": cell.label(), "model": model_name, "wall_s": statistics.median(walls[1:]),
                          "ops_s": ops, "modelled_s": sum(v[1] for v in timed.by_class.values()),
                          "by_class": {k: {"measured_s": v[0], "modelled_s": v[1], "calls": v[2]}
                                       for k, v in timed.by_class.items()}}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
