"""The estimator contract: hyperparameter gradients from a read-only view of training.

An estimator sees the real weights, buffers and hyperparameters through `HyperStepInputs`
and returns gradients with the structure of the hyperparameters. It must not change the real
weights, the buffers (BatchNorm running statistics included) or the optimiser state: it works
on functional copies (`functional.leaf_copy`, `functional.scratch_buffers`). It may keep state
of its own across calls (online methods need it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from harness.core.params import Param
from workloads.base import BilevelProblem, TensorDict


@dataclass
class HyperStepInputs:
    problem: BilevelProblem
    train_batches: Sequence[Any]   # the first is the batch the real step will use next (or, for a
                                   # real-step-first estimator, the one it has just used)
    val_batch: Any
    lr: float                      # the inner optimiser's current learning rate (eta)
    step: int                      # index of the real inner step about to be taken
    # d(update)/d(gradient) of the real inner optimiser per weight, at its current state
    # (SAMA's adaptation); None where no real optimiser stands behind the inputs (then: lr)
    update_derivative: Callable[[], Mapping[str, Tensor | float]] | None = None

    @property
    def weights(self) -> TensorDict:
        return self.problem.weights

    @property
    def buffers(self) -> TensorDict:
        return self.problem.buffers

    @property
    def hparams(self) -> TensorDict:
        return self.problem.hparams


class Estimator(ABC):
    name: ClassVar[str]
    doc: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    stochastic: ClassVar[bool] = False  # draws randomness per call: fidelity averages draws

    def __init__(self, params: Mapping[str, Any], seed: int = 0):
        self.p = dict(params)
        self.seed = seed

    @property
    def n_train_batches(self) -> int:
        """How many training batches one hyper-step consumes (the first is the real one)."""
        return 1

    @property
    def real_step_first(self) -> bool:
        """True: each meta-iteration takes the real inner step first and then the hyper-step
        around the updated weights, on the batch that step used (EvoGrad as the official LFT
        code runs it); False (default): the hyper-step first, on the batch the real step
        will use next."""
        return False

    @property
    def saved_tensor_probe_applies(self) -> bool:
        """False where autograd's saved-tensor hooks cannot account for this estimator's work
        (forward-mode AD: its packed tensors are never handed back to the probe)."""
        return True

    @property
    def measurement_note(self) -> str:
        """What the harness's probes cannot see of this estimator's work (e.g. forward-mode
        tangents and the saved-tensor probe); it goes into the row's `memory_note`."""
        return ""

    @property
    def fake_step_refusal(self) -> str:
        """Why `hgbench predict`'s fake-tensor count would be wrong for this estimator ("" where
        it holds); such a cell's prediction is a failed row with this reason, never a number."""
        return ""

    @abstractmethod
    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict | None:
        """Gradients keyed like `inputs.hparams`, or None for "no hyper-update"."""

    def observe_inner_step(self, weights: TensorDict, batch: Any, step: int) -> None:
        """Called before every real inner step `step` (1-based) with the weights before it
        and its batch, whether or not a hyper-step precedes it. Online estimators keep their
        state here; the default does nothing. Must not change `weights`."""


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
