from __future__ import annotations

from typing import Any

import torch

from estimators.base import Estimator, HyperStepInputs, generator_for
from estimators.functional import (dot, grads, leaf_copy, mixed_product, mixed_vjp, norm, scratch_buffers,
                                   sgd_step, train_grad_graph, val_grads, vjp_grads)
from harness.core.params import Param, positive
from workloads.base import TensorDict


def subsample(batch: Any, fraction: float, gen: torch.Generator) -> Any:
    """SS(D, p): a random round(|D| p) of the samples of a tuple-of-tensors batch."""
    if batch is None:
        return None
    n = int(round(len(batch[0]) * fraction))
    idx = torch.randperm(len(batch[0]), generator=gen)[:n]
    return tuple(t[idx.to(t.device)] for t in batch)


def union(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return a if b is None else b
    return tuple(torch.cat([x, y]) for x, y in zip(a, b))


def mix(a: TensorDict, b: TensorDict, p: float) -> TensorDict:
    """p * a + (1 - p) * b, detached."""
    return {k: (p * a[k] + (1 - p) * b[k]).detach() for k in a}


def clone(weights: TensorDict) -> TensorDict:
    return {k: v.detach().clone() for k, v in weights.items()}


class HyperDistill(Estimator):
    """HyperDistill (Lee et al., ICLR 2022): the whole-horizon second-order term approximated
    by ONE vector-Jacobian product at a distilled weight point w* and distilled batch D*,
    scaled by theta * (1 - gamma^t) / (1 - gamma).

    Choices the paper leaves open, made here:
    - The inner step Phi is plain SGD at the current learning rate (as for every estimator),
      although the real step may use momentum.
    - w* and D* distil the PAST real steps (w_{s-1}, D_s), s = 1..t, as the paper's online
      algorithm: they are updated before every real inner step (`observe_inner_step`, Eq.
      13/14), also between hyper-steps when `hyper_every` > 1, and alpha is taken at w_t,
      after the last real step. With gamma 0 the hypergradient is then exactly that of
      Lval(w_t) through the last real step (w_{t-1}, D_t) with a plain-SGD step (a test).
      t counts the real steps taken; the first hyper-step, before any real step, has no
      past step to distil and returns gFO (the horizon factor (1 - gamma^0)/(1 - gamma) is 0).
    - theta (Algorithm 4) is refitted every `estimation_period` hyper-steps over a window of
      `window` REAL training steps: w_0 and the window's batches are recorded as training
      runs, and only the backward sweep costs extra. The sweep uses the linearly
      interpolated trajectory (DrMAD) both for the Jacobians and for the backward distilled
      points w_{H-s}, so its memory is constant in `window`; the batches are kept.
    - `unit_direction`: for workloads whose direct gradient gFO is zero (Meta-Weight-Net)
      the paper sets the size factor to 1 and uses v / ||v||; theta is then never fitted.
    - alpha = grad_w Lval at the current weights (the paper's algorithm: the validation
      gradient at the weights the hyper-step sees, no lookahead), so a hyper-step costs one
      validation backward and one distilled VJP: no more than T1-T2's. `lookahead` instead
      takes alpha after a plain-SGD lookahead step (one more training forward and
      backward) and distils the upcoming pair (w_t, D_{t+1}) too, so that with gamma 0 it
      is exactly T1-T2 (a test); it is what hgbench measured before these defaults changed.
    """

    name = "hyperdistill"
    doc = "one distilled Jacobian-vector product per hyper-step with a fitted scale"
    params = (Param("gamma", float, 0.99, "decay of the distilled point and batch",
                    check=lambda v: 0 <= v < 1, check_doc="in [0, 1)"),
              positive("estimation_period", int, 50, "hyper-steps between fits of theta"),
              positive("window", int, 10, "inner steps in the window theta is fitted on"),
              Param("theta", float, 1.0, "initial scale theta"),
              Param("unit_direction", bool, False, "use v/||v|| (gFO = 0 workloads; no theta fit)"),
              Param("lookahead", bool, False, "alpha after a plain-SGD lookahead step and the upcoming step "
                    "distilled too (costs a training forward and backward more; gamma 0 is then exactly T1-T2) "
                    "instead of alpha at the current weights and past steps only"),
              Param("pass_order", str, "train_first", "train_first: the distilled training graph, then the "
                    "validation pass (T1-T2's order and time); val_first: the validation pass first, a lower "
                    "peak (the graph never coexists with it) but pages faulted afresh on the CPU",
                    choices=("train_first", "val_first")))

    def __init__(self, params, seed: int = 0):
        super().__init__(params, seed)
        self.theta = self.p["theta"]
        self.t = 0                                  # real inner steps distilled so far
        self.w_star: TensorDict | None = None
        self.d_star: Any = None
        self.calls = 0
        self.window: dict[str, Any] | None = None   # {"w0", "batches", "wH"} while recording
        self.fitted: list[float] = []               # every theta fitted, for inspection
        self._gen: torch.Generator | None = None

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = generator_for(torch.device("cpu"), self.seed)
        return self._gen

    # -- the distilled point and batch (Eq. 13 and 14) ---------------------------------
    def observe_inner_step(self, weights: TensorDict, batch: Any, step: int) -> None:
        if step <= self.t:
            return
        self.t = step
        gamma = self.p["gamma"]
        if self.w_star is None:
            self.w_star, self.d_star = clone(weights), batch
        else:
            p = (gamma - gamma ** step) / (1 - gamma ** step)
            self.w_star = mix(self.w_star, weights, p)
            self.d_star = union(subsample(self.d_star, p, self._generator()),
                                subsample(batch, 1 - p, self._generator()))
        self._record(weights, batch)

    def _close_window(self, weights: TensorDict) -> None:
        """A full window's w_H is the weights after its last step: the weights now."""
        w = self.window
        if w is not None and w["wH"] is None and len(w["batches"]) == self.p["window"]:
            w["wH"] = clone(weights)

    def _record(self, weights: TensorDict, batch: Any) -> None:
        w = self.window
        if w is None or w["wH"] is not None:
            return
        if len(w["batches"]) == self.p["window"]:
            w["wH"] = clone(weights)          # the weights after the window's last step
        else:
            if w["w0"] is None:
                w["w0"] = clone(weights)
            w["batches"].append(batch)

    # -- the hypergradient ----------------------------------------------------------------
    def hypergradient(self, inputs: HyperStepInputs) -> TensorDict:
        problem, lam, lr, gamma = inputs.problem, inputs.hparams, inputs.lr, self.p["gamma"]
        if self.p["lookahead"]:
            # the upcoming pair (w_t, D_{t+1}) is distilled too: gamma 0 is then T1-T2
            self.observe_inner_step(inputs.weights, inputs.train_batches[0], inputs.step + 1)
        self._close_window(inputs.weights)
        t = self.t  # real steps distilled: the horizon's length
        if not self.p["unit_direction"]:
            if self.window is not None and self.window["wH"] is not None:
                self.theta = self.fit_theta(inputs, **self.window)
                self.fitted.append(self.theta)
                self.window = None
            if self.window is None and self.calls % self.p["estimation_period"] == 0:
                self.window = {"w0": None, "batches": [], "wH": None}  # from the next step
        self.calls += 1

        if t == 0:
            # Before any real step there is no past step to distil: the horizon factor
            # (1 - gamma^0) / (1 - gamma) is 0 and the hypergradient is the direct one, gFO.
            return val_grads(problem, leaf_copy(inputs.weights), scratch_buffers(inputs.buffers), lam,
                             inputs.val_batch)[1]
        buffers = scratch_buffers(inputs.buffers)
        # train_first (default) builds the distilled training graph before the validation
        # pass, in T1-T2's order. In the other order the graph's memory was faulted in afresh
        # every hyper-step on the CPU (glibc had handed the validation pass's pages back):
        # 42k minor page faults against T1-T2's 25k at MW-Net ResNet10 batch 64, and 1.07x
        # its time for the same FLOPs; train_first faults 26k. val_first keeps the lower
        # peak (the validation pass's memory is gone before the graph is built).
        train_first = self.p["pass_order"] == "train_first"
        if train_first:
            g_star = train_grad_graph(problem, self.w_star, buffers, lam, self.d_star)
        w_alpha = leaf_copy(inputs.weights)
        if self.p["lookahead"]:
            g_train = grads(problem.train_loss(w_alpha, buffers, lam, inputs.train_batches[0]), w_alpha)
            w_alpha = leaf_copy(sgd_step(w_alpha, g_train, lr))
        alpha, g_fo = val_grads(problem, w_alpha, buffers, lam, inputs.val_batch)
        if not train_first:
            g_star = train_grad_graph(problem, self.w_star, buffers, lam, self.d_star)
        v = mixed_product(g_star, lam, alpha, lr)
        if self.p["unit_direction"]:
            scale = 1.0 / float(norm(v).clamp_min(1e-30))
        else:
            scale = self.theta * (1 - gamma ** t) / (1 - gamma)
        return {k: g_fo[k] + scale * v[k] for k in lam}

    # -- Algorithm 4: LinearEstimation of theta ---------------------------------------------
    def fit_theta(self, inputs: HyperStepInputs, w0: TensorDict, batches: list, wH: TensorDict) -> float:
        """Least squares through the origin of y_s (the DrMAD second-order term of the last s
        steps, projected on v_s's direction) on x_s (||v_s|| times the horizon factor)."""
        problem, lam, lr, gamma = inputs.problem, inputs.hparams, inputs.lr, self.p["gamma"]
        H = len(batches)
        buffers = scratch_buffers(inputs.buffers)
        alpha_H, _ = val_grads(problem, leaf_copy(wH), buffers, lam, inputs.val_batch)
        a = dict(alpha_H)
        g_so = {k: torch.zeros_like(v) for k, v in lam.items()}
        xs, ys = [], []
        w_star, d_star = None, None
        for step in range(H, 0, -1):
            s = H - step + 1
            w_hat = leaf_copy(mix(w0, wH, 1 - (step - 1) / H))   # w^_{t-1}, interpolated
            batch = batches[step - 1]                               # D_t
            g = grads(problem.train_loss(w_hat, buffers, lam, batch), w_hat, create_graph=True)
            # one double backward gives both a.dPhi/dlam (via -lr * d<g,a>/dlam) and
            # a.dPhi/dw = a - lr * H a
            both = vjp_grads(g, {**{("w", k): x for k, x in w_hat.items()},
                                 **{("h", k): x for k, x in lam.items()}}, a)
            g_so = {k: g_so[k] - lr * both[("h", k)] for k in lam}
            a = {k: a[k] - lr * both[("w", k)] for k in a}
            if s == 1:
                w_star, d_star = clone(w_hat), batch
            else:
                p = (1 - gamma ** (s - 1)) / (1 - gamma ** s)
                w_star = mix(w_star, w_hat, p)
                d_star = union(subsample(d_star, p, self._generator()),
                               subsample(batch, 1 - p, self._generator()))
            v = mixed_vjp(problem, w_star, buffers, lam, d_star, alpha_H, lr)
            v_norm = float(norm(v))
            if v_norm == 0.0:
                continue
            xs.append(v_norm * (1 - gamma ** s) / (1 - gamma))
            ys.append(float(dot(v, g_so)) / v_norm)
        x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
        return float((x @ y) / (x @ x)) if len(xs) else self.theta
