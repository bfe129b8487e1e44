"""Data from outside the repository (CIFAR-10/100, MNIST-style sets, image folders, read
by torchvision from a path the suite gives) and seeded synthetic data for cost-only runs.

Paths are checked when the suite loads (`check_*`), so a missing dataset stops the run
before any cell with one line naming the path and how to provide it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.core.errors import ConfigError
from workloads.data import Split

CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR100", "cifar-100-python", 100)}
MNIST_LIKE = ("mnist", "fashionmnist", "kmnist")
# Per-channel statistics used to standardise CIFAR images (the usual values).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cifar_class(name: str, verify: bool):
    """torchvision's reader. Without download it checks that the files exist, not their MD5
    sums, so subsets and re-packed copies in the same format load too."""
    import torchvision.datasets as tvd

    base = getattr(tvd, CIFAR[name][0])
    if verify:
        return base
    return type(f"Present{base.__name__}", (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None}})


def check_cifar(name: str, root: str, download: bool, where: str) -> None:
    folder = Path(root or ".").expanduser() / CIFAR[name][1]
    if not download and not folder.is_dir():
        raise ConfigError(f"{where}: no {CIFAR[name][0]} at {folder}; extract the python-version "
                          f"archive into {Path(root or '.').expanduser()} or set download: true")


def load_cifar(name: str, root: str, download: bool, train: bool) -> Split:
    """The train or test set as standardised float tensors [N,3,32,32] and labels."""
    try:
        ds = _cifar_class(name, download)(root=str(Path(root).expanduser()), train=train, download=download)
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{name} at {root}: cannot read it ({e}); re-extract the archive or set "
                          "download: true") from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return Split((x - mean) / std, torch.tensor(ds.targets, dtype=torch.long))


def check_mnist(name: str, root: str, download: bool, where: str) -> None:
    folder = Path(root or ".").expanduser() / _mnist_class(name).__name__ / "raw"
    if not download and not folder.is_dir():
        raise ConfigError(f"{where}: no {_mnist_class(name).__name__} at {folder}; put the raw files "
                          "there (torchvision layout) or set download: true")


def _mnist_class(name: str):
    import torchvision.datasets as tvd
    return {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[name]


def load_mnist(name: str, root: str, download: bool, train: bool) -> Split:
    """Images in [0, 1] as [N,1,28,28] float tensors (background 0) and labels."""
    try:
        ds = _mnist_class(name)(root=str(Path(root).expanduser()), train=train, download=download)
    except (RuntimeError, OSError) as e:
        raise ConfigError(f"{name} at {root}: cannot read it ({e}); set download: true") from None
    return Split(ds.data.unsqueeze(1).float() / 255, ds.targets.long())


def check_folder(path: str, where: str) -> None:
    folder = Path(path).expanduser()
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise ConfigError(f"{where}: {folder} is not an image folder (one sub-folder of images per "
                          "class, as torchvision's ImageFolder reads)")


def synthetic_split(n: int, channels: int, size: int, num_classes: int, seed: int) -> Split:
    """Seeded standard-normal images with uniformly drawn labels: the shapes of a paper-size
    dataset for cost-only measurement. Accuracy on it means nothing; rows say `synthetic`."""
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, channels, size, size, generator=gen),
                 torch.randint(0, num_classes, (n,), generator=gen))


def standardise(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std()
