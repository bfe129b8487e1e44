from __future__ import annotations

import torch

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import grads, leaf_copy, scratch_buffers, unroll_val_loss
from estimators.mixed_mode import SWEEPS, mixed_mode_unroll
from harness.core.params import Param, positive
from workloads.base import TensorDict


# backend -> the mixed-mode sweep it runs (`estimators.mixed_mode.SWEEPS`)
MIXED_BACKENDS = {"mixed": "fwad", "mixed-jvp": "jvp", "mixed-linearize": "linearize"}
assert set(MIXED_BACKENDS.values()) == set(SWEEPS)


class Unroll(Estimator):
    """Reverse-mode differentiation through T plain-SGD steps ("second-order"; T=1 is MW-Net's
    and LFT's one-step lookahead). The whole unrolled graph is kept, so memory grows with T.

    Backends compute the same thing three ways: `func` takes the steps itself with
    `torch.autograd.grad(create_graph=True)` on functional weights and backpropagates through
    the whole unrolled graph (reverse-over-reverse); `higher` lets `higher.innerloop_ctx`'s
    differentiable SGD take them (a cross-check; the losses still go through the workload's
    functional `train_loss` on higher's fast weights, on cloned buffers, because higher's
    patched module would write the real BatchNorm statistics); `mixed` stores only the T
    iterates and sweeps back over them, each Hessian-vector and mixed product a
    forward-mode derivative of a first-order gradient (forward-over-reverse, MixFlow-MG), so
    no double-backward graph is kept and memory does not grow with the unrolled graph.
    `mixed-jvp` takes those products through `torch.func.jvp` instead of dual tensors, and
    `mixed-linearize` keeps each inner step's gradient with its `torch.func.linearize` map from
    the forward unroll rather than recomputing it in the sweep (see `estimators.mixed_mode`).
    """

    name = "unroll"
    doc = "backprop through T differentiable SGD steps"
    params = (positive("T", int, 1, "number of unrolled inner steps"),
              Param("backend", str, "func", "func: torch.func.functional_call + autograd.grad; "
                    "higher: higher.innerloop_ctx; mixed: forward-over-reverse sweep over stored iterates "
                    "(dual tensors); mixed-jvp: the same by torch.func.jvp; mixed-linearize: each step's "
                    "gradient and its linearisation kept from the forward unroll (memory grows with T)",
                    choices=("func", "higher", *MIXED_BACKENDS)))

    @property
    def n_train_batches(self) -> int:
        return self.p["T"]

    @property
    def saved_tensor_probe_applies(self) -> bool:
        return self.p["backend"] not in MIXED_BACKENDS

    @property
    def measurement_note(self) -> str:
        if self.p["backend"] not in MIXED_BACKENDS:
            return ""
        return ("no graph_bytes: the saved-tensor probe cannot follow forward-mode AD (its tangents "
                "ride on the saved tensors); the peak columns measure the sweep's memory")

    @property
    def fake_step_refusal(self) -> str:
        sweep = MIXED_BACKENDS.get(self.p["backend"])
        if sweep is not None and not SWEEPS[sweep].fake_count_holds:
            return (f"backend {self.p['backend']} is not predicted: under fake tensors torch.func's wrapped "
                    "tensors and make_fx's traced constants are not counted as they are allocated (its "
                    "prediction missed the live-byte peak by 3-20x); measure it, or predict backend mixed")
        return ""

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        if self.p["backend"] in MIXED_BACKENDS:
            return mixed_mode_unroll(inputs.problem, inputs.weights, scratch_buffers(inputs.buffers),
                                     inputs.hparams, inputs.train_batches, inputs.val_batch, inputs.lr,
                                     sweep=MIXED_BACKENDS[self.p["backend"]])
        if self.p["backend"] == "higher":
            val_loss = self._higher_val_loss(inputs)
        else:
            val_loss = unroll_val_loss(inputs.problem, leaf_copy(inputs.weights),
                                       scratch_buffers(inputs.buffers), inputs.hparams,
                                       inputs.train_batches, inputs.val_batch, inputs.lr)
        return grads(val_loss, inputs.hparams)

    def _higher_val_loss(self, inputs: HyperStepInputs) -> torch.Tensor:
        # imported here: only this cross-check needs higher, and importing it at start-up
        # costs every command its import (and, uncompiled, a SyntaxWarning of higher's own)
        import higher

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
