from __future__ import annotations

import higher
import torch

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import grads, leaf_copy, scratch_buffers, unroll_val_loss
from harness.core.params import Param, positive
from workloads.base import TensorDict


class Unroll(Estimator):
    """Reverse-mode differentiation through T plain-SGD steps ("second-order"; T=1 is MW-Net's
    and LFT's one-step lookahead). The whole unrolled graph is kept, so memory grows with T.

    Backends compute the same thing two ways, as a cross-check: `func` takes the steps itself
    with `torch.autograd.grad(create_graph=True)` on functional weights; `higher` lets
    `higher.innerloop_ctx`'s differentiable SGD take them. With `higher` the losses still go
    through the workload's functional `train_loss` on higher's fast weights, on cloned
    buffers, because higher's patched module would write the real BatchNorm statistics.
    """

    name = "unroll"
    doc = "backprop through T differentiable SGD steps"
    params = (positive("T", int, 1, "number of unrolled inner steps"),
              Param("backend", str, "func", "func: torch.func.functional_call + autograd.grad; "
                    "higher: higher.innerloop_ctx", choices=("func", "higher")))

    @property
    def n_train_batches(self) -> int:
        return self.p["T"]

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        if self.p["backend"] == "higher":
            val_loss = self._higher_val_loss(inputs)
        else:
            val_loss = unroll_val_loss(inputs.problem, leaf_copy(inputs.weights),
                                       scratch_buffers(inputs.buffers), inputs.hparams,
                                       inputs.train_batches, inputs.val_batch, inputs.lr)
        return grads(val_loss, inputs.hparams)

    def _higher_val_loss(self, inputs: HyperStepInputs) -> torch.Tensor:
        problem, model = inputs.problem, inputs.problem.model
        names = [n for n, _ in model.named_parameters()]
        weight_names = list(problem.weights)  # the model may also hold hyperparameters (LFT's FT)
        buffers = scratch_buffers(inputs.buffers)
        # stateless SGD (no momentum) over the weights only
        opt = torch.optim.SGD(list(problem.weights.values()), lr=inputs.lr)

        def fast(fmodel) -> dict[str, torch.Tensor]:
            params = dict(zip(names, fmodel.parameters()))
            return {n: params[n] for n in weight_names}

        with higher.innerloop_ctx(model, opt, copy_initial_weights=True,
                                  track_higher_grads=True) as (fmodel, diffopt):
            for batch in inputs.train_batches:
                diffopt.step(problem.train_loss(fast(fmodel), buffers, inputs.hparams, batch))
            return problem.val_loss(fast(fmodel), buffers, inputs.hparams, inputs.val_batch)
