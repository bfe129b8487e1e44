"""The estimator contract, as a check anyone can run: hgbench's own tests, `hgbench check`,
and a plugin author's tests (`from harness.train.contract import check_estimator`).

An estimator reads the real training state and returns gradients shaped like the
hyperparameters; it must not change the real weights, buffers (BatchNorm statistics
included), hyperparameters or the inner optimiser's state. The check runs one hypergradient
on a small Meta-Weight-Net problem (ResNet10 with BatchNorm, momentum SGD) after a few real
steps, so every kind of state exists and a change to any of it is seen.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from estimators import ESTIMATORS, make_estimator
from estimators.base import HyperStepInputs
from harness.core.params import resolve
from harness.train.metaloop import MetaTrainer
from workloads import WORKLOADS


class ContractViolation(AssertionError):
    """An estimator broke the contract; the message lists every violation found."""


def contract_problem(seed: int = 0, width: int = 4, batch_size: int = 16, steps: int = 2) -> MetaTrainer:
    """A tiny MW-Net problem after `steps` real momentum steps (so optimiser state exists)."""
    torch.manual_seed(seed)
    workload = WORKLOADS.get("mwn")
    params = resolve(workload.params, {"width": width, "batch_size": batch_size}, "mwn")
    problem = workload.build(params, "resnet10", seed, torch.device("cpu"))
    trainer = MetaTrainer(problem, make_estimator("plain", {}, seed), total_steps=100)
    for _ in range(steps):
        trainer.iteration()
    return trainer


def _snapshot(trainer: MetaTrainer) -> dict[str, Any]:
    p = trainer.problem
    return {"weight": {k: v.detach().clone() for k, v in p.weights.items()},
            "buffer": {k: v.clone() for k, v in p.buffers.items()},
            "hyperparameter": {k: v.detach().clone() for k, v in p.hparams.items()},
            "optimiser": copy.deepcopy(trainer.inner_opt.state_dict())}


def _changes(before: dict[str, Any], trainer: MetaTrainer) -> list[str]:
    p, out = trainer.problem, []
    for kind, now in (("weight", p.weights), ("buffer", p.buffers), ("hyperparameter", p.hparams)):
        out += [f"changed {kind} {k}" for k, v in now.items() if not torch.equal(v, before[kind][k])]
    after = trainer.inner_opt.state_dict()
    if after["param_groups"] != before["optimiser"]["param_groups"]:
        out.append("changed the inner optimiser's settings (param_groups)")
    for idx, state in before["optimiser"]["state"].items():
        for name, value in state.items():
            new = after["state"].get(idx, {}).get(name)
            if not (isinstance(value, torch.Tensor) and isinstance(new, torch.Tensor) and torch.equal(value, new)) \
                    and not (not isinstance(value, torch.Tensor) and value == new):
                out.append(f"changed inner optimiser state {name} of parameter {idx}")
    return out


def _structure(g: Any, hparams: Mapping[str, torch.Tensor]) -> list[str]:
    if g is None:
        return []  # "no hyper-update" is allowed (plain)
    if not isinstance(g, Mapping) or set(g) != set(hparams):
        keys = sorted(map(repr, g)) if isinstance(g, Mapping) else type(g).__name__
        return [f"returned {keys}, not gradients keyed like the hyperparameters {sorted(hparams)}"]
    out = []
    for k, v in hparams.items():
        t = g[k]
        if not isinstance(t, torch.Tensor) or t.shape != v.shape or t.dtype != v.dtype:
            what = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            out.append(f"gradient of {k} is {what}, not {tuple(v.shape)} {v.dtype}")
        elif not bool(torch.isfinite(t).all()):
            out.append(f"gradient of {k} is not finite")
    return out


def check_estimator(name: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
    """Run estimator `name` (a registered one, plugins included) once on the contract problem;
    raise ContractViolation listing everything it broke."""
    cls = ESTIMATORS.get(name)
    resolved = resolve(cls.params, params, name)
    try:
        estimator = make_estimator(name, resolved, seed)
    except Exception as e:
        raise ContractViolation(f"{name}: its constructor raised {type(e).__name__}: {e}") from e
    trainer = contract_problem(seed)
    before = _snapshot(trainer)
    inputs = HyperStepInputs(trainer.problem, trainer.train_stream.peek(estimator.n_train_batches),
                             next(trainer.val_stream), trainer.lr, trainer.step)
    try:
        g = estimator.hypergradient(inputs)
    except Exception as e:
        raise ContractViolation(f"{name}: hypergradient raised {type(e).__name__}: {e}") from e
    problems = _changes(before, trainer) + _structure(g, trainer.problem.hparams)
    if problems:
        raise ContractViolation(f"{name}: " + "; ".join(problems))


def contract_outcome(name: str) -> str | None:
    """`check_estimator(name)` as `hgbench check` runs it, in a process of its own: None when
    the contract holds, else what was broken. Anything the estimator does instead of
    returning (raise, sys.exit) is a violation, never the checker's own exit."""
    try:
        check_estimator(name)
    except ContractViolation as e:
        return str(e)
    except SystemExit as e:
        return f"{name}: called sys.exit({e.code!r})"
    except BaseException as e:
        return f"{name}: the check raised {type(e).__name__}: {e}"
    return None
