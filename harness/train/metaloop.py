"""The one meta-training loop every estimator shares.

Every `hyper_every` inner steps: a hyper-step (estimator, then hyper-optimiser) on the batch
the real step is about to use (plus the following batches, peeked, for multi-step
estimators), then the real inner step. Estimators differ only in `hypergradient`, and all of
them see the same sequence of real training batches.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from estimators.base import Estimator, HyperStepInputs
from estimators.functional import leaf_copy, scratch_buffers
from harness.core.errors import ContractBreach, Diverged
from workloads.base import BilevelProblem


class PeekableStream:
    def __init__(self, stream: Iterator[Any]):
        self._stream = stream
        self._ahead: deque[Any] = deque()

    def peek(self, n: int) -> list[Any]:
        while len(self._ahead) < n:
            self._ahead.append(next(self._stream))
        return list(self._ahead)[:n]

    def __next__(self) -> Any:
        return self._ahead.popleft() if self._ahead else next(self._stream)


class MetaTrainer:
    def __init__(self, problem: BilevelProblem, estimator: Estimator, total_steps: int,
                 hyper_every: int = 1):
        self.problem, self.estimator, self.hyper_every = problem, estimator, hyper_every
        self.inner_opt, self.scheduler = problem.inner.build(list(problem.weights.values()), total_steps)
        self.hyper_opt = problem.hyper.build(list(problem.hparams.values()))
        self.train_stream = PeekableStream(problem.train_stream)
        self.val_stream = PeekableStream(problem.val_stream)
        self.total_steps = total_steps
        self.step = 0
        self.last_loss: Tensor | None = None
        self.last_batch: Any = None  # the batch of the last real step (real-step-first estimators)
        self._bad_hypergrad: Tensor | None = None  # a device flag: no host sync per step

    @property
    def lr(self) -> float:
        return self.inner_opt.param_groups[0]["lr"]

    def _hyper_batches(self) -> list[Any]:
        """The hyper-step's training batches: those the next real steps will use, or, for an
        estimator that takes the real step first (EvoGrad as the LFT code runs it), the one
        the last real step used, then the next ones."""
        n = self.estimator.n_train_batches
        if self.estimator.real_step_first and self.last_batch is not None:
            return [self.last_batch, *self.train_stream.peek(n - 1)]
        return self.train_stream.peek(n)

    def hyper_step(self) -> None:
        batches = self._hyper_batches()
        inputs = HyperStepInputs(self.problem, batches, next(self.val_stream), self.lr, self.step,
                                 self.update_derivative)
        hypergrad = self.estimator.hypergradient(inputs)
        if hypergrad is None:
            return
        if not isinstance(hypergrad, Mapping) or hypergrad.keys() != self.problem.hparams.keys():
            got = sorted(map(repr, hypergrad)) if isinstance(hypergrad, Mapping) else type(hypergrad).__name__
            raise ContractBreach(f"estimator {self.estimator.name!r} returned gradients for {got}, not for the "
                                 f"hyperparameters {sorted(self.problem.hparams)} (`hgbench check` tells more)")
        for name, p in self.problem.hparams.items():
            p.grad = hypergrad[name]
            bad = ~torch.isfinite(p.grad).all()
            self._bad_hypergrad = bad if self._bad_hypergrad is None else self._bad_hypergrad | bad
        self.hyper_opt.step()

    def update_derivative(self) -> dict[str, Tensor | float]:
        """The real optimiser's d(update)/d(gradient) per weight now (InnerOptim)."""
        return dict(zip(self.problem.weights, self.problem.inner.update_derivative(self.inner_opt)))

    def inner_step(self) -> Tensor:
        batch = next(self.train_stream)
        weights = self.problem.weights
        self.estimator.observe_inner_step(weights, batch, self.step + 1)
        progress = self.step / self.total_steps if self.total_steps else 0.0
        loss = self.problem.real_step_loss(weights, self.problem.buffers, self._frozen_hparams(), batch, progress)
        for p, g in zip(weights.values(), torch.autograd.grad(loss, list(weights.values()), allow_unused=True)):
            p.grad = g
        self.inner_opt.step()
        self.scheduler.step()
        self.step += 1
        self.last_loss = loss.detach()
        self.last_batch = batch
        return self.last_loss

    def _frozen_hparams(self) -> dict[str, Tensor]:
        """Hyperparameters as constants: weight steps build no graph to them."""
        return {k: v.detach() for k, v in self.problem.hparams.items()}

    def plain_step(self) -> None:
        """Forward and backward of the next real batch w.r.t. the weights, changing nothing:
        the unit in which a hyper-step's cost is expressed ("x plain step")."""
        batch = self.train_stream.peek(1)[0]
        weights = leaf_copy(self.problem.weights)
        loss = self.problem.train_loss(weights, scratch_buffers(self.problem.buffers),
                                       self._frozen_hparams(), batch)
        torch.autograd.grad(loss, list(weights.values()), allow_unused=True)

    def batch_samples(self) -> int | None:
        """Samples in one real training batch (for the memory frontier); None without data."""
        batch = self.train_stream.peek(1)[0]
        return None if batch is None else int(batch[0].shape[0])

    def iteration(self, hyper: bool | None = None) -> None:
        """One meta-iteration; `hyper` forces or skips the hyper-step (default: the schedule)."""
        due = self.step % self.hyper_every == 0 if hyper is None else hyper
        if self.estimator.real_step_first:
            self.inner_step()
            if due:
                self.hyper_step()
            return
        if due:
            self.hyper_step()
        self.inner_step()

    def train(self, steps: int, before_step: Callable[["MetaTrainer"], None] | None = None,
              hyper: bool | None = None) -> None:
        """`steps` meta-iterations; `before_step(self)` runs before each (fidelity probes);
        `hyper=False` skips every hyper-step (plain training, hyperparameters held)."""
        for _ in range(steps):
            if before_step is not None:
                before_step(self)
            self.iteration(hyper)
        self.check_finite()

    def check_finite(self) -> None:
        if self._bad_hypergrad is not None and bool(self._bad_hypergrad):
            raise Diverged(f"a hypergradient was not finite within {self.step} steps")
        tensors = {"training loss": self.last_loss, **{f"hyperparameter {k}": v for k, v in self.problem.hparams.items()}}
        for what, t in tensors.items():
            if t is not None and not bool(torch.isfinite(t).all()):
                raise Diverged(f"{what} is not finite after {self.step} steps")
