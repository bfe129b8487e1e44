from __future__ import annotations

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import CommonDraws, add, grads, leaf_copy, norm, scratch_buffers, sgd_step, val_grads, vjp_grads
from harness.core.params import Param
from workloads.base import TensorDict


class T1T2(Estimator):
    """One-step mixed second derivative (Luketina et al. 2016): g = gFO + alpha_{t+1} B_{t+1}.

    alpha = dLval/dw is taken first-order at the weights after a plain SGD step, so no graph
    is kept through the validation forward. `exact` then takes one double backward through
    the training loss (equal to unroll T=1 with the same batches); `fd` replaces that mixed
    derivative by DARTS's central difference along v = alpha with eps = 0.01/||v||
    (first-order only). The training pass and both sides of the difference run under the
    same random draws (`CommonDraws`), so `fd` approximates `exact`'s derivative of one
    function, the one the training pass drew.
    """

    name = "t1t2"
    doc = "one-step mixed second derivative (exact double-backward or DARTS finite difference)"
    params = (Param("mode", str, "exact", "exact: double backward; fd: central finite difference",
                    choices=("exact", "fd")),
              Param("fd_scale", float, 0.01, "fd: eps = fd_scale / ||alpha||",
                    check=lambda v: v > 0, check_doc="> 0"))

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        problem, lam, lr = inputs.problem, inputs.hparams, inputs.lr
        batch = inputs.train_batches[0]
        buffers = scratch_buffers(inputs.buffers)
        w0 = leaf_copy(inputs.weights)
        exact = self.p["mode"] == "exact"
        with CommonDraws() as draws:
            with draws.same():
                g_train = grads(problem.train_loss(w0, buffers, lam, batch), w0, create_graph=exact)
            w1 = leaf_copy(sgd_step(w0, g_train, lr))
            alpha, g_fo = val_grads(problem, w1, buffers, lam, inputs.val_batch)
            if exact:
                mixed = vjp_grads(g_train, lam, alpha)  # d/dlam <grad_w Ltrain(w0), alpha>
            else:
                eps = self.p["fd_scale"] / float(norm(alpha).clamp_min(1e-12))
                with draws.same():
                    plus = grads(problem.train_loss(add(w0, alpha, eps), buffers, lam, batch), lam)
                with draws.same():
                    minus = grads(problem.train_loss(add(w0, alpha, -eps), buffers, lam, batch), lam)
                mixed = {k: (plus[k] - minus[k]) / (2 * eps) for k in lam}
        return {k: g_fo[k] - lr * mixed[k] for k in lam}
