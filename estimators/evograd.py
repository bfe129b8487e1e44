from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from estimators.base import Estimator, HyperStepInputs, generator_for
from estimators.functional import grads, scratch_buffers
from harness.core.errors import ConfigError
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
    perturbed = list(noises[0])  # the weights the noises perturb; the others stay at base
    candidates = [{**base, **{k: base[k] + sigma * eps[k] for k in perturbed}} for eps in noises]
    losses = torch.stack([problem.train_loss(w, scratch, hparams, batch) for w in candidates])
    a = torch.softmax(-losses / tau, dim=0)
    # (an unperturbed weight's combination is base * sum(a) = base, with no graph to lam)
    w_star = {**base, **{k: sum(a[i] * c[k] for i, c in enumerate(candidates)) for k in perturbed}}
    return grads(problem.val_loss(w_star, scratch, hparams, val_batch), hparams)


class EvoGrad(Estimator):
    """First-order evolutionary hypergradient: no second derivative, no unrolled graph.

    Perturbations come from the estimator's own generator (seeded per cell), so runs repeat.
    Each candidate's training loss draws its own workload noise (LFT's FT noise), as the
    official code's candidate forwards do.

    The official experiments differ in three choices, each a parameter here:
    - `perturb`: which weights are perturbed. `all` (MW-Net, rotation; LFT's feature and
      relation-module weights, `methods/LFTNetMetaEvo.py` 122-145) or `head`, the weights
      the workload names as its head (`BilevelProblem.head`): MetaXL's official
      `step_metaxl_evograd` perturbs only the classifier (`get_func_params(main_net.
      classifier)`), so the K candidates share one copy of the transformer.
    - `order`: `hyper_first` (the harness's loop: the hyper-step on the batch the real step
      will use) or `real_first` (the official LFT loop: the real step first, then EvoGrad
      around the updated weights on the episode that step used).
    - `sigma_from_lr`: sigma is the inner optimiser's current learning rate (the official
      LFT code: `sigma = model_optim.param_groups[0]['lr']`) instead of `sigma`.
    """

    name = "evograd"
    stochastic = True
    doc = "K perturbed weight copies combined by softmax(-loss/tau); first-order only"
    params = (Param("K", int, 2, "number of perturbed copies", check=lambda v: v >= 2, check_doc=">= 2"),
              positive("sigma", float, 0.001, "perturbation scale"),
              positive("tau", float, 0.05, "softmax temperature"),
              Param("noise", str, "rademacher", "perturbation distribution",
                    choices=("rademacher", "gaussian")),
              Param("perturb", str, "all", "all: every weight; head: only the workload's head (MetaXL's "
                    "official EvoGrad perturbs the classifier alone)", choices=("all", "head")),
              Param("order", str, "hyper_first", "hyper_first: hyper-step, then the real step; real_first: "
                    "the real step, then EvoGrad around the updated weights (the official LFT code)",
                    choices=("hyper_first", "real_first")),
              Param("sigma_from_lr", bool, False, "sigma = the inner optimiser's current learning rate "
                    "(the official LFT code) instead of `sigma`"))

    def __init__(self, params, seed: int = 0):
        super().__init__(params, seed)
        self._gen: torch.Generator | None = None

    @property
    def real_step_first(self) -> bool:
        return self.p["order"] == "real_first"

    def perturbed(self, problem: BilevelProblem) -> dict[str, Tensor]:
        weights = problem.weights
        if self.p["perturb"] == "all":
            return weights
        head = {k: v for k, v in weights.items() if k.startswith(tuple(problem.head))} if problem.head else {}
        if not head:
            raise ConfigError(f"evograd perturb: head: this workload names no head weights "
                              f"({type(problem).__name__}.head is {tuple(problem.head)!r}); use perturb: all")
        return head

    def draw_noises(self, weights: Mapping[str, Tensor]) -> list[TensorDict]:
        device = next(iter(weights.values())).device
        if self._gen is None:
            self._gen = generator_for(device, self.seed)
        def one(t: Tensor) -> Tensor:
            z = torch.randn(t.shape, generator=self._gen, device=device, dtype=t.dtype)
            return torch.sign(z) if self.p["noise"] == "rademacher" else z
        return [{k: one(v) for k, v in weights.items()} for _ in range(self.p["K"])]

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        sigma = inputs.lr if self.p["sigma_from_lr"] else self.p["sigma"]
        return evograd_hypergradient(inputs.problem, inputs.weights, inputs.buffers, inputs.hparams,
                                     inputs.train_batches[0], inputs.val_batch,
                                     self.draw_noises(self.perturbed(inputs.problem)), sigma, self.p["tau"])
