"""How many passes of each kind one hyper-step does, counted from the work itself.

benchopt counts oracle calls and HyperDistill's paper counts JVPs; a table per estimator
would only repeat what its author believes it does. Instead, during one hyper-step, the
problem's two losses and autograd's two entry points are wrapped and every call is
classified by what it actually touches:

- a training (validation) forward is a call of the problem's `train_loss` (`val_loss`);
  one that receives a forward-mode dual tensor is also a forward-mode pass (a JVP);
- a backward is a call of `torch.autograd.grad` or `torch.autograd.backward` (what
  `Tensor.backward` calls; `higher` calls `torch.autograd.grad` too); it is *kept* when it
  builds a graph (`create_graph=True`), and it is a *double* backward when the part of the
  graph it runs, from its outputs to its inputs, passes through a node built by an earlier
  kept backward (it differentiates through a gradient); every other backward is first-order.

So unroll T=1 is one training forward, one kept first-order backward, one validation
forward and one double backward (the validation loss's backward runs through the kept
gradient); the mixed backend's sweep shows forward-mode passes and no double backward.

Inside torch.func's transforms (the `mixed-jvp` and `mixed-linearize` backends) a loss run
under a `jvp` transform, or traced on duals by `linearize`, is a forward-mode pass, and the `torch.autograd.grad` that
`torch.func.grad` itself calls asks for `create_graph` only so that an enclosing transform
may differentiate it: it counts as kept only when a reverse-mode transform (grad, vjp)
encloses it, not under forward-mode alone.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.autograd.graph import get_gradient_edge

@dataclass
class PassCounts:
    train_forwards: int = 0
    val_forwards: int = 0
    backwards: int = 0          # first-order: none of its graph was built by a kept backward
    kept_backwards: int = 0     # backwards with create_graph=True (first-order or double)
    double_backwards: int = 0   # backwards through a gradient built with create_graph
    forward_mode: int = 0       # forward-mode (JVP) passes: a training forward on dual tensors

    def as_row(self) -> dict[str, int]:
        """As the `passes_*` columns (`harness.core.schema.PASS_COLUMNS`)."""
        return {f"passes_{f.name}": getattr(self, f.name) for f in fields(self)}


def _functorch_stack() -> list:
    """The active torch.func transforms, outermost first (empty outside any)."""
    return [i.key() for i in retrieve_all_functorch_interpreters()]


def _is_dual(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and fwAD.unpack_dual(x).tangent is not None


def _has_dual(args: tuple, kwargs: dict) -> bool:
    for a in (*args, *kwargs.values()):
        values = a.values() if isinstance(a, dict) else a if isinstance(a, (list, tuple)) else (a,)
        if any(_is_dual(v) for v in values):
            return True
    return False


def _is_forward_mode(args: tuple, kwargs: dict) -> bool:
    """A loss on dual tensors, or run under a `torch.func.jvp` transform, or under any
    torch.func transform while a `forward_ad.dual_level` is open (`torch.func.linearize`'s
    trace: functorch's wrappers hide the dual from `unpack_dual`)."""
    stack = _functorch_stack()
    return (_has_dual(args, kwargs) or TransformType.Jvp in stack
            or (bool(stack) and fwAD._current_level >= 0))


def _as_list(x) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, torch.Tensor) else list(x)


def _runs_through(outputs: list[torch.Tensor], inputs: list[torch.Tensor] | None, marked: set) -> bool:
    """Whether the backward from `outputs` to `inputs` executes a node in `marked`.

    Autograd runs only the nodes on a path from an output to an input (for `backward`
    without inputs: to any leaf) and stops at an input's edge, so an input's own node is not
    run. Iterative post-order with a memo: the graphs here have thousands of nodes."""
    stop = None if inputs is None else {get_gradient_edge(x).node for x in inputs if x.requires_grad}
    reaches: dict[Any, bool] = {}  # node -> whether a path from it ends at an input
    for root in (o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None):
        stack = [root]
        while stack:
            node = stack[-1]
            if node in reaches:
                stack.pop()
                continue
            if stop is not None and node in stop:
                reaches[node] = True
                stack.pop()
                continue
            children = [c for c, _ in node.next_functions if c is not None]
            pending = [c for c in children if c not in reaches]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            reaches[node] = (stop is None and not children) or any(reaches[c] for c in children)
    return any(ok and node in marked and (stop is None or node not in stop) for node, ok in reaches.items())


class PassCounter:
    """Counts one block's passes (see the module's docstring); one counter at a time, on the
    calling thread only (autograd's own worker threads never call these entry points)."""

    _lock = threading.Lock()

    def __init__(self, problem):
        self.problem = problem
        self.counts = PassCounts()
        # grad_fn nodes of the gradients built with create_graph; held for the counter's life
        # (a count pass is a pass of its own: what they keep alive is never measured)
        self._marked: set = set()
        self._thread = threading.get_ident()
        self._inside = False  # within a counted torch.autograd.grad call

    def _loss(self, original: Callable, kind: str) -> Callable:
        def counted(*args, **kwargs):
            if threading.get_ident() == self._thread:
                setattr(self.counts, kind, getattr(self.counts, kind) + 1)
                if _is_forward_mode(args, kwargs):
                    self.counts.forward_mode += 1
            return original(*args, **kwargs)
        return counted

    def _backward(self, outputs, inputs, create_graph: bool) -> None:
        double = _runs_through(_as_list(outputs), None if inputs is None else _as_list(inputs), self._marked)
        if double:
            self.counts.double_backwards += 1
        else:
            self.counts.backwards += 1
        if create_graph:
            self.counts.kept_backwards += 1

    def _mark(self, got) -> None:
        for g in _as_list(got):
            if isinstance(g, torch.Tensor) and g.grad_fn is not None:
                self._marked.add(g.grad_fn)

    @contextmanager
    def counting(self) -> Iterator["PassCounter"]:
        problem, grad, backward = self.problem, torch.autograd.grad, torch.autograd.backward

        def counted_grad(outputs, inputs, *args, **kwargs):
            if threading.get_ident() != self._thread or self._inside:
                # (a call nested in a counted one is the same pass: make_fx's tracing, as
                # in torch.func.linearize, re-enters torch.autograd.grad from its handler)
                return grad(outputs, inputs, *args, **kwargs)
            create = bool(kwargs.get("create_graph", args[2] if len(args) > 2 else False))
            stack = _functorch_stack()
            if stack and stack[-1] == TransformType.Grad:  # torch.func.grad's own call
                create = TransformType.Grad in stack[:-1]  # (vjp runs as a Grad transform too)
            self._backward(outputs, inputs, create)
            self._inside = True
            try:
                got = grad(outputs, inputs, *args, **kwargs)
            finally:
                self._inside = False
            if create:
                self._mark(got)
            return got

        def counted_backward(tensors, *args, **kwargs):
            if threading.get_ident() != self._thread:
                return backward(tensors, *args, **kwargs)
            create = bool(kwargs.get("create_graph", args[2] if len(args) > 2 else False))
            self._backward(tensors, kwargs.get("inputs"), create)
            return backward(tensors, *args, **kwargs)  # (gradients land in .grad, not marked)

        own = {k: problem.__dict__[k] for k in ("train_loss", "val_loss") if k in problem.__dict__}
        with self._lock:
            problem.train_loss = self._loss(problem.train_loss, "train_forwards")
            problem.val_loss = self._loss(problem.val_loss, "val_forwards")
            torch.autograd.grad, torch.autograd.backward = counted_grad, counted_backward
            try:
                yield self
            finally:
                torch.autograd.grad, torch.autograd.backward = grad, backward
                for k in ("train_loss", "val_loss"):
                    if k in own:
                        setattr(problem, k, own[k])
                    else:
                        delattr(problem, k)


def count_passes(trainer) -> dict[str, int]:
    """The pass counts of the trainer's next hyper-step, as `passes_*` columns."""
    counter = PassCounter(trainer.problem)
    with counter.counting():
        trainer.hyper_step()
    return counter.counts.as_row()
