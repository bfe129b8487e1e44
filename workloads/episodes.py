"""Few-shot episodes over domains: the data side of cross-domain few-shot learning.

A domain is a labelled image pool (tensors in memory, or an image folder read on demand).
An episode is N classes of one domain, K support and Q query images each, relabelled
0..N-1; as a batch it is the tuple (images, labels, is_query) with the sample first, so the
estimators' batch handling (peeking, joining) applies to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads.data import load_embedded_images
from workloads.datasets import scan_image_folder


class Domain:
    name: str
    labels: Tensor  # [n] class of each image

    def load(self, index: Tensor) -> Tensor:
        """Images [len(index), C, H, W] for these pool indices."""
        raise NotImplementedError

    def classes_with(self, at_least: int) -> list[int]:
        counts = torch.bincount(self.labels)
        return [c for c in range(len(counts)) if counts[c] >= at_least]


@dataclass
class TensorDomain(Domain):
    name: str
    images: Tensor
    labels: Tensor

    def load(self, index: Tensor) -> Tensor:
        return self.images[index]


class FolderDomain(Domain):
    """One folder per class (torchvision ImageFolder), resized and centre-cropped to `size`,
    standardised with the ImageNet statistics; images are read per episode."""

    def __init__(self, name: str, root: str, size: int):
        from torchvision import datasets, transforms

        self.name = name
        tf = transforms.Compose([transforms.Resize(int(size * 1.15)), transforms.CenterCrop(size),
                                 transforms.ToTensor(),
                                 transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        folder = Path(root).expanduser()

        class Scanned(datasets.ImageFolder):  # ImageFolder, over the loop-safe, bounded scan
            @staticmethod
            def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
                return scan_image_folder(Path(directory), f"lft domain {name}")

        self.dataset = Scanned(str(folder), transform=tf)
        self.labels = torch.tensor(self.dataset.targets, dtype=torch.long)

    def load(self, index: Tensor) -> Tensor:
        return torch.stack([self.dataset[int(i)][0] for i in index])


# ------------------------------------------------------------------ domains from the digits

def _blur(x: Tensor) -> Tensor:
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 256
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, 5, 5).contiguous(), padding=2, groups=c)


def _tint(x: Tensor) -> Tensor:
    return x * torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1) + torch.tensor([0.2, -0.1, 0.4]).view(1, 3, 1, 1)


DIGIT_DOMAINS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    # name: transform of standardised 3-channel digits (documented in README, "lft")
    "original": lambda x, g: x,
    "inverted": lambda x, g: -x,
    "rotated": lambda x, g: torch.rot90(x, 1, dims=(2, 3)),
    "noisy": lambda x, g: x + 0.6 * torch.randn(x.shape, generator=g),
    "blurred": lambda x, g: _blur(x),
    "tinted": lambda x, g: _tint(x),
}


def digit_domains(names: list[str], size: int, seed: int, source: str = "digits") -> dict[str, Domain]:
    """Each named domain is the full embedded set (`source`: digits or mnist5k) under its
    transform, so a held-out domain differs from the training domains in appearance, the
    shift few-shot methods must bridge."""
    x, y = load_embedded_images(source, size=size, channels=3)
    gen = torch.Generator().manual_seed(seed)
    return {n: TensorDomain(n, DIGIT_DOMAINS[n](x, gen).contiguous(), y) for n in names}


# ------------------------------------------------------------------ episodes

@dataclass(frozen=True)
class EpisodeShape:
    n_way: int
    n_shot: int
    n_query: int

    @property
    def per_class(self) -> int:
        return self.n_shot + self.n_query


def sample_episode(domain: Domain, shape: EpisodeShape, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(images, labels 0..N-1, is_query): the support images first, class by class."""
    classes = domain.classes_with(shape.per_class)
    if len(classes) < shape.n_way:
        raise ValueError(f"domain {domain.name!r} has {len(classes)} classes with >= {shape.per_class} "
                         f"images; a {shape.n_way}-way episode needs {shape.n_way}")
    chosen = [classes[i] for i in torch.randperm(len(classes), generator=gen)[:shape.n_way].tolist()]
    support, query = [], []
    for c in chosen:
        pool = torch.nonzero(domain.labels == c).flatten()
        pick = pool[torch.randperm(len(pool), generator=gen)[:shape.per_class]]
        support.append(pick[:shape.n_shot])
        query.append(pick[shape.n_shot:])
    index = torch.cat(support + query)
    labels = torch.cat([torch.arange(shape.n_way).repeat_interleave(shape.n_shot),
                        torch.arange(shape.n_way).repeat_interleave(shape.n_query)])
    is_query = torch.cat([torch.zeros(shape.n_way * shape.n_shot, dtype=torch.bool),
                          torch.ones(shape.n_way * shape.n_query, dtype=torch.bool)])
    return domain.load(index), labels, is_query


@dataclass
class DomainPairs:
    """For meta-iteration i, one pseudo-seen and one different pseudo-unseen training domain,
    the same for every estimator (a function of the seed and i only)."""
    names: list[str]
    seed: int

    def pair(self, i: int) -> tuple[str, str]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        a, b = torch.randperm(len(self.names), generator=gen)[:2].tolist()
        return self.names[a], self.names[b]


@dataclass
class EpisodeStream:
    """Endless episodes; `role` 0 draws from each iteration's pseudo-seen domain, 1 from its
    pseudo-unseen one."""
    domains: dict[str, Domain]
    pairs: DomainPairs
    role: int
    shape: EpisodeShape
    seed: int
    device: torch.device
    step: int = 0
    gen: torch.Generator = field(init=False)

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.seed)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> tuple[Tensor, Tensor, Tensor]:
        name = self.pairs.pair(self.step)[self.role]
        self.step += 1
        return tuple(t.to(self.device) for t in sample_episode(self.domains[name], self.shape, self.gen))
