from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from estimators.base import Estimator, HyperStepInputs, generator_for
from estimators.functional import grads, scratch_buffers
from harness.core.params import Param, positive
from workloads.base import BilevelProblem, TensorDict


def evograd_hypergradient(problem: BilevelProblem, weights: Mapping[str, Tensor],
                          buffers: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                          batch: Any, val_batch: Any, noises: Sequence[Mapping[str, Tensor]],
                          sigma: float, tau: float) -> TensorDict:
    """EvoGrad (Bohdal et al. 2021) for given perturbations: K perturbed copies, their
    training losses (graph to the hyperparameters only), softmax(-l/tau) weights, the
    weighted model w*, and an ordinary first-order backward of Lval(w*)."""
    base = {k: v.detach() for k, v in weights.items()}
    scratch = scratch_buffers(buffers)
    candidates = [{k: base[k] + sigma * eps[k] for k in base} for eps in noises]
    losses = torch.stack([problem.train_loss(w, scratch, hparams, batch) for w in candidates])
    a = torch.softmax(-losses / tau, dim=0)
    w_star = {k: sum(a[i] * c[k] for i, c in enumerate(candidates)) for k in base}
    return grads(problem.val_loss(w_star, scratch, hparams, val_batch), hparams)


class EvoGrad(Estimator):
    """First-order evolutionary hypergradient: no second derivative, no unrolled graph.

    Perturbations come from the estimator's own generator (seeded per cell), so runs repeat.
    """

    name = "evograd"
    stochastic = True
    doc = "K perturbed weight copies combined by softmax(-loss/tau); first-order only"
    params = (Param("K", int, 2, "number of perturbed copies", check=lambda v: v >= 2, check_doc=">= 2"),
              positive("sigma", float, 0.001, "perturbation scale"),
              positive("tau", float, 0.05, "softmax temperature"),
              Param("noise", str, "rademacher", "perturbation distribution",
                    choices=("rademacher", "gaussian")))

    def __init__(self, params, seed: int = 0):
        super().__init__(params, seed)
        self._gen: torch.Generator | None = None

    def draw_noises(self, weights: Mapping[str, Tensor]) -> list[TensorDict]:
        device = next(iter(weights.values())).device
        if self._gen is None:
            self._gen = generator_for(device, self.seed)
        def one(t: Tensor) -> Tensor:
            z = torch.randn(t.shape, generator=self._gen, device=device, dtype=t.dtype)
            return torch.sign(z) if self.p["noise"] == "rademacher" else z
        return [{k: one(v) for k, v in weights.items()} for _ in range(self.p["K"])]

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        return evograd_hypergradient(inputs.problem, inputs.weights, inputs.buffers, inputs.hparams,
                                     inputs.train_batches[0], inputs.val_batch,
                                     self.draw_noises(inputs.weights), self.p["sigma"], self.p["tau"])
