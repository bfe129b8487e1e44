"""SAMA (Choe et al., NeurIPS 2023, "Making Scalable Meta Learning Practical").

Implicit differentiation with the base Jacobian (the inverse Hessian) taken as the identity:
no inverse, no lookahead step, only first-order gradients:

    g = gFO - d/dlam <grad_w Ltrain(w, lam; D), v>,   v = adapt(grad_w Lval(w))

all at the current weights. The mixed derivative is a central finite difference of two
first-order gradients with respect to lam, at w + eps v and w - eps v (eps = fd_scale /
||v||), so a hyper-step is three first-order backward passes (one validation, two training).
Both training passes run under the same random draws (`CommonDraws`: LFT's FT noise, any
dropout); with fresh draws per pass the difference quotient would divide the difference of
two different functions by 2 eps and grow as 1/eps.

`adapt` is SAMA's "algorithmic adaptation": v scaled by the derivative of the real inner
optimiser's update with respect to its gradient, at its current state
(`InnerOptim.update_derivative`): for SGD the learning rate, times (1 + momentum) with
Nesterov momentum (the real update's slope: 1.9 lr at MW-Net's 0.9; the reference's rule is
lr alone, which differs by that constant factor); for Adam and AdamW, elementwise, lr (1 - b1) / (1 - b1^t) / (sqrt(v_hat)
+ eps) with the second moment held at its current state. Betty's public implementation
leaves v unscaled for SGD (the hyper learning rate absorbs the factor) and uses fd scale
R = 1.0 in its experiments (0.3 on some); ours defaults to DARTS's 0.01, as T1-T2's finite
difference does here. Without a real optimiser behind the inputs (a bare probe), the
learning rate is used.
"""
from __future__ import annotations

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import CommonDraws, add, detached, grads, leaf_copy, norm, scratch_buffers, val_grads
from harness.core.params import Param, positive
from workloads.base import TensorDict


class SAMA(Estimator):
    name = "sama"
    doc = "identity base Jacobian, adapted validation gradient, mixed derivative by finite difference"
    params = (positive("fd_scale", float, 0.01, "eps = fd_scale / ||v|| (SAMA's experiments: 1.0)"),
              Param("adapt", bool, True, "scale v by the inner optimiser's d(update)/d(gradient) "
                    "(SGD: the learning rate, x (1 + momentum) with Nesterov; Adam: per coordinate)"))

    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        problem, lam = inputs.problem, inputs.hparams
        batch, buffers = inputs.train_batches[0], scratch_buffers(inputs.buffers)
        w = detached(inputs.weights)
        alpha, g_fo = val_grads(problem, leaf_copy(w), buffers, lam, inputs.val_batch)
        if self.p["adapt"]:
            slope = inputs.update_derivative() if inputs.update_derivative else {}
            v = {k: slope.get(k, inputs.lr) * a for k, a in alpha.items()}
        else:
            v = alpha
        eps = self.p["fd_scale"] / float(norm(v).clamp_min(1e-30))
        with CommonDraws() as draws:  # both sides under the same FT noise / dropout
            with draws.same():
                plus = grads(problem.train_loss(add(w, v, eps), buffers, lam, batch), lam)
            with draws.same():
                minus = grads(problem.train_loss(add(w, v, -eps), buffers, lam, batch), lam)
        return {k: g_fo[k] - (plus[k] - minus[k]) / (2 * eps) for k in lam}
