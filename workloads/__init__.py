"""Workloads: registered bilevel problems. Import a module here to register its workload."""
from harness.core.registry import Registry
from workloads.backbones import BACKBONES
from workloads.base import BilevelProblem, Workload
from workloads.lft import LearnedFeatureWiseTransform
from workloads.metaxl import MetaXL
from workloads.mwn import MetaWeightNet
from workloads.rotation import LearnedRotation
from workloads.toy1d import Toy1D

WORKLOADS: Registry[Workload] = Registry("workload")
for _w in (Toy1D(), MetaWeightNet(), LearnedFeatureWiseTransform(), LearnedRotation(), MetaXL()):
    WORKLOADS.register(_w.name)(_w)

__all__ = ["WORKLOADS", "BACKBONES", "BilevelProblem", "Workload"]
