from __future__ import annotations

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import grads, leaf_copy, scratch_buffers, val_grads, vjp_grads
from harness.core.params import Param
from workloads.base import TensorDict


class Neumann(Estimator):
    """Implicit-function-theorem hypergradient (Lorraine et al. 2020):
    g = gFO - grad_lam <grad_w Ltrain(w, lam), p>, with p ~= H^-1 alpha^T by `terms` steps of a
    truncated Neumann series (Hessian-vector products), all at the current weights w.

    `alpha = 0` (default) uses the inner optimiser's current learning rate as the series
    step; with `terms = 0` and that step this is T1-T2's term at the current weights. With
    `hyper_every` it reproduces the HyperDistill paper's N.IFT(N, K) baseline.
    """

    name = "neumann"
    doc = "implicit-function hypergradient with a truncated Neumann series for H^-1"
    params = (Param("terms", int, 5, "Neumann series terms (Hessian-vector products)",
                    check=lambda v: v >= 0, check_doc=">= 0"),
              Param("alpha", float, 0.0, "series step; 0 = the inner learning rate",
                    check=lambda v: v >= 0, check_doc=">= 0"))

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        problem, lam = inputs.problem, inputs.hparams
        step = self.p["alpha"] or inputs.lr
        buffers = scratch_buffers(inputs.buffers)
        w = leaf_copy(inputs.weights)
        g_train = grads(problem.train_loss(w, buffers, lam, inputs.train_batches[0]), w, create_graph=True)

        alpha, g_fo = val_grads(problem, w, buffers, lam, inputs.val_batch)

        v, p = dict(alpha), dict(alpha)
        for _ in range(self.p["terms"]):
            hv = vjp_grads(g_train, w, v, retain_graph=True)
            v = {k: v[k] - step * hv[k] for k in v}
            p = {k: p[k] + v[k] for k in p}
        p = {k: step * t for k, t in p.items()}
        mixed = vjp_grads(g_train, lam, p)
        return {k: g_fo[k] - mixed[k] for k in lam}
