"""Hypergradient fidelity: how close an estimator's hypergradient is to the true one.

At checkpoints spread over meta-training, the cell's estimator (a copy, so its state and
random stream are untouched) and two references see the same weights and batches: the
exact one-step lookahead (unroll T=1) and a long unroll (T = reference_T); where the
workload has a closed form (toy1d), that too. Stochastic estimators are drawn several times
per checkpoint. Columns are means over checkpoints, with standard deviations.
"""
from __future__ import annotations

import copy
import statistics
import torch

from estimators.base import HyperStepInputs
from estimators.unroll import Unroll
from harness.core.schema import FIDELITY_METRICS as METRICS
from harness.plan.fidelity import checkpoint_steps
from harness.train.metaloop import MetaTrainer


def _flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in g.values()])


def compare(g: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(g, ref, dim=0)
    return {"cos": float(cos), "sign": float((torch.sign(g) == torch.sign(ref)).double().mean()),
            "relerr": float((g - ref).norm() / ref.norm().clamp_min(1e-30))}


class FidelityProbe:
    """Call before meta-iterations (`MetaTrainer.train(before_step=probe)`)."""

    def __init__(self, spec: dict[str, int], train_steps: int):
        self.spec = spec
        self.steps = checkpoint_steps(train_steps, spec["checkpoints"])
        self.samples: dict[str, list[float]] = {m: [] for m in METRICS}

    def __call__(self, trainer: MetaTrainer) -> None:
        if trainer.step in self.steps:
            self.measure(trainer)

    def measure(self, trainer: MetaTrainer) -> None:
        problem, T = trainer.problem, self.spec["reference_T"]
        estimator = copy.deepcopy(trainer.estimator)
        batches = trainer.train_stream.peek(max(T, estimator.n_train_batches))
        val = trainer.val_stream.peek(1)[0]
        inputs = lambda n: HyperStepInputs(problem, batches[:n], val, trainer.lr, trainer.step)
        draws = self.spec["draws"] if estimator.stochastic else 1
        gs = [estimator.hypergradient(inputs(estimator.n_train_batches)) for _ in range(draws)]
        if gs[0] is None:  # `plain` has no hypergradient
            return
        one = _flat(Unroll({"T": 1, "backend": "func"}).hypergradient(inputs(1)))
        long = _flat(Unroll({"T": T, "backend": "func"}).hypergradient(inputs(T)))
        exact = problem.exact_hypergradient() if hasattr(problem, "exact_hypergradient") else None
        for g in map(_flat, gs):
            vs_one, vs_long = compare(g, one), compare(g, long)
            self.samples["fid_cos_1step"].append(vs_one["cos"])
            self.samples["fid_cos_long"].append(vs_long["cos"])
            self.samples["fid_sign_long"].append(vs_long["sign"])
            self.samples["fid_relerr_long"].append(vs_long["relerr"])
            if exact is not None:
                vs_exact = compare(g, _flat(exact))
                self.samples["fid_cos_exact"].append(vs_exact["cos"])
                self.samples["fid_relerr_exact"].append(vs_exact["relerr"])

    def columns(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for m, xs in self.samples.items():
            out[m] = statistics.fmean(xs) if xs else None
            out[m + "_std"] = statistics.pstdev(xs) if xs else None
        return out
