"""Embedded data and seeded batch streams (no network: scikit-learn ships the digits)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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


def load_digits_images(size: int = 32, channels: int = 3) -> tuple[Tensor, Tensor]:
    """The 1797 real 8x8 handwritten digits, bilinearly upsampled and standardised.

    CNN backbones are defined for >= 32 px inputs with 3 channels; upsampling keeps the data
    real while letting the same backbones run at their usual shapes.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    x = x.expand(-1, channels, -1, -1).contiguous()
    return x, torch.tensor(digits.target, dtype=torch.long)


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
