"""The workload contract: a bilevel problem that every estimator can differentiate through.

Weights, buffers and hyperparameters travel as name -> tensor dicts so that estimators can
build functional copies (`torch.func.functional_call`) and never touch the real model.
"""
from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from harness.core.params import Param

TensorDict = dict[str, Tensor]


_INNER_OPTIMISERS = {"sgd", "adam", "adamw"}
INNER_OPTIMISER_NAMES = tuple(sorted(_INNER_OPTIMISERS))
SCHEDULES = ("step", "linear")


@dataclass(frozen=True)
class InnerOptim:
    """The real inner optimiser: SGD (momentum, Nesterov, weight decay), Adam or AdamW, with a
    linear warm-up over the first `warmup` fraction of the run and then either step decay
    (x `decay` at each of `milestones`, fractions of the run) or linear decay to 0
    (`schedule="linear"`, as transformers' fine-tuning and MetaXL do).

    Lookaheads inside estimators use plain SGD with the *current* learning rate whatever the
    real optimiser is (as the original Meta-Weight-Net, LFT and MetaXL code do); only the
    real step uses the rest. `update_derivative` gives SAMA the real optimiser's slope.
    """
    lr: float
    kind: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = ()
    decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup: float = 0.0
    schedule: str = "step"

    def __post_init__(self):
        if self.kind not in _INNER_OPTIMISERS or self.schedule not in SCHEDULES:
            raise ValueError(f"inner optimiser {self.kind!r} / schedule {self.schedule!r}: use one of "
                             f"{INNER_OPTIMISER_NAMES} / {SCHEDULES}")

    def _optimizer(self, params: Sequence[Tensor]) -> torch.optim.Optimizer:
        if self.kind == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.kind == "adamw" else torch.optim.Adam
        return cls(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The multiplier of `lr` for the real step taken after `step` steps."""
        warm = int(round(self.warmup * total_steps))
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warm)) if total_steps else 1.0
        steps = sorted({max(1, int(round(m * total_steps))) for m in self.milestones})
        return self.decay ** bisect.bisect_right(steps, step)

    def build(self, params: Sequence[Tensor], total_steps: int):
        opt = self._optimizer(params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step, total_steps))
        return opt, sched

    def update_derivative(self, opt: torch.optim.Optimizer) -> list[Tensor | float]:
        """Per parameter of `opt`, d(update)/d(gradient) of the next real step at the
        optimiser's current state (SAMA's algorithmic adaptation). SGD: the learning rate,
        times (1 + momentum) with Nesterov momentum (torch's Nesterov step adds lr * momentum
        times the new buffer, which holds the gradient once more: MW-Net's 0.9 gives 1.9 lr;
        SAMA's reference uses lr alone, a constant factor the hyper learning rate would
        absorb). Adam/AdamW: lr (1 - b1) / (1 - b1^t) / (sqrt(v_hat) + eps),
        elementwise, holding the second moment v at its current state (t the next step);
        before the first step (no state yet) the learning rate."""
        group = opt.param_groups[0]
        lr = group["lr"]
        if self.kind == "sgd":
            slope = lr * (1 + group["momentum"]) if group["nesterov"] else lr
            return [slope for _ in group["params"]]
        b1, b2 = group["betas"]
        out: list[Tensor | float] = []
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "exp_avg_sq" not in state:
                out.append(lr)
                continue
            t = float(state["step"]) + 1
            v_hat = state["exp_avg_sq"] / (1 - b2 ** (t - 1))
            out.append(lr * (1 - b1) / (1 - b1 ** t) / (v_hat.sqrt() + group["eps"]))
        return out


def inner_optimizer_param(default: str, why: str) -> Param:
    """The `inner_optimizer` setting a workload offers (InnerOptim.kind)."""
    return Param("inner_optimizer", str, default, f"the real inner optimiser ({why}); lookaheads stay plain "
                 "SGD at its current learning rate", choices=INNER_OPTIMISER_NAMES)


_HYPER_OPTIMISERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass(frozen=True)
class HyperOptim:
    name: str
    lr: float
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self, params: Sequence[Tensor]) -> torch.optim.Optimizer:
        return _HYPER_OPTIMISERS[self.name](params, lr=self.lr, **self.kwargs)


HYPER_OPTIMISER_NAMES = tuple(_HYPER_OPTIMISERS)


class BilevelProblem(ABC):
    """One built instance of a workload: model, hyperparameters, losses, data, optimisers.

    `train_loss` and `val_loss` are pure in their tensor arguments (they may update the
    `buffers` they are given, e.g. BatchNorm statistics, which is why estimators pass
    clones). The real model's parameters are the real weights. A batch is a tuple of tensors
    whose first dimension is the sample (so estimators can subsample and join batches), or
    None for a problem without data.
    """

    model: nn.Module
    hparams: TensorDict          # leaf tensors with requires_grad=True
    inner: InnerOptim
    hyper: HyperOptim
    train_stream: Iterator[Any]
    val_stream: Iterator[Any]

    @property
    def weights(self) -> TensorDict:
        return dict(self.model.named_parameters())

    @property
    def buffers(self) -> TensorDict:
        return dict(self.model.named_buffers())

    @abstractmethod
    def train_loss(self, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                   hparams: Mapping[str, Tensor], batch: Any) -> Tensor: ...

    @abstractmethod
    def val_loss(self, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 hparams: Mapping[str, Tensor], batch: Any) -> Tensor: ...

    def real_step_loss(self, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                       hparams: Mapping[str, Tensor], batch: Any, progress: float) -> Tensor:
        """The loss the REAL inner step descends, `progress` the fraction of the run's steps
        taken: the training loss, plus whatever a workload's own code adds to the real step
        only (LFT's auxiliary loss); lookaheads never see the addition."""
        return self.train_loss(weights, buffers, hparams, batch)

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Metrics of the real model now: `test_accuracy`, `final_val_loss`, and extras."""

    synthetic: bool = False  # True: seeded random data, for cost only (no accuracy is reported)
    # Name prefixes of the weights that form the model's head (its last classifier or scoring
    # module): what EvoGrad's `perturb: head` perturbs. Empty: the workload names none.
    head: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Facts for the results row (parameter counts, ...)."""
        n = lambda d: sum(t.numel() for t in d.values())
        return {"n_params": n(self.weights), "n_hparams": n(self.hparams), "synthetic": self.synthetic}


@contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode (BatchNorm running statistics, FT layers off), then as before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def classification_scores(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                          chunk: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `logits` over a whole split, in chunks."""
    loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = logits(x[i:i + chunk])
        loss += float(torch.nn.functional.cross_entropy(out, y[i:i + chunk], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return loss / len(y), correct / len(y)


class ClassifierProblem(BilevelProblem):
    """A problem whose model classifies images, validated by plain cross-entropy: the
    functional logits, the validation loss, and loss/accuracy over whole splits."""

    def logits(self, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, (dict(weights), dict(buffers)), (x,))

    def val_loss(self, weights, buffers, hparams, batch) -> Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.logits(weights, buffers, x), y)

    def split_metrics(self, val: Any, test: Any) -> dict[str, float]:
        """`final_val_loss`, `val_accuracy` and `test_accuracy` of the real model, in eval mode."""
        with eval_mode(self.model):
            logits = lambda x: self.logits(self.weights, self.buffers, x)
            val_loss, val_acc = classification_scores(logits, val.x, val.y)
            _, test_acc = classification_scores(logits, test.x, test.y)
        return {"final_val_loss": val_loss, "test_accuracy": test_acc, "val_accuracy": val_acc}


class Workload(ABC):
    """A registered recipe that builds a BilevelProblem from validated parameters."""

    name: str
    params: tuple[Param, ...] = ()
    backbones: tuple[str, ...] = ("none",)  # the first is the default
    doc: str = ""
    # Modules its cells import that torch and hgbench do not: the forkserver imports them
    # once for the whole run instead of once per cell process.
    preload: tuple[str, ...] = ()

    def default_backbone(self, params: Mapping[str, Any]) -> str:
        """The backbone a suite entry gets when it names none."""
        return self.backbones[0]

    def validate(self, params: Mapping[str, Any], where: str) -> None:
        """Checks that need more than one parameter, or the file system (a dataset's path),
        made when the suite loads so that no cell starts on a bad setting."""

    def validate_backbone(self, params: Mapping[str, Any], backbone: str, where: str) -> None:
        """Checks of parameters against the backbone's own sizes (a preset), at load."""

    @abstractmethod
    def build(self, params: Mapping[str, Any], backbone: str, seed: int,
              device: torch.device) -> BilevelProblem: ...
