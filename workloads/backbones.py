"""Backbones: the ResNet family (BasicBlock ResNet10/18/34, the CIFAR ResNet32) with a width
multiplier and optional feature-wise transformation layers, and LeNet.

Each factory takes `num_classes`, `width` (the first stage's channels), `in_channels`,
`stem` and `ft`. `features(x)` is the pooled representation before the classifier, and
`feature_maps(x)` the last stage's maps (for relation heads).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.core.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
STEMS = ("cifar", "imagenet")


class FeatureWiseTransform(nn.Module):
    """Tseng et al. (ICLR 2020): after a BatchNorm, scale and shift each channel by sampled
    noise, gamma ~ 1 + N(0, softplus(g)), beta ~ N(0, softplus(b)), one draw per forward for
    the whole batch. Active in train mode only (and while `active`); g and b, of shape
    [1,C,1,1] and initialised to 0.3 and 0.5, are hyperparameters. As the official code
    (`methods/backbone.py` `FeatureWiseTransformation2d_fw`), softplus is taken with
    beta = 100, so the noise scales start at about 0.3 and 0.5 (plain softplus would make
    them 0.85 and 0.97)."""

    SOFTPLUS_BETA = 100.0

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 0.3))
        self.beta = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.active = True

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.active):
            return x
        shape = (1, x.shape[1], 1, 1)
        gamma = 1 + torch.randn(shape, dtype=x.dtype, device=x.device) * self.scale(self.gamma)
        beta = torch.randn(shape, dtype=x.dtype, device=x.device) * self.scale(self.beta)
        return gamma * x + beta

    @classmethod
    def scale(cls, raw: Tensor) -> Tensor:
        """The noise's standard deviation for a raw hyperparameter value."""
        return F.softplus(raw, beta=cls.SOFTPLUS_BETA)


def _ft(channels: int, ft: bool) -> nn.Module:
    return FeatureWiseTransform(channels) if ft else nn.Identity()


class PadShortcut(nn.Module):
    """The CIFAR ResNet's parameter-free "option A" shortcut (He et al. 2016, as in
    Meta-Weight-Net's ResNet32): subsample by 2, pad the new channels with zeros."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut, then ReLU. With `ft`, a feature-wise
    transformation follows the second BatchNorm (the end of the residual branch) and the
    shortcut's BatchNorm, as the official LFT ResNet's `SimpleBlock` (its `BN2` and
    `BNshortcut` are `FeatureWiseTransformation2d_fw`; `BN1` is a plain BatchNorm)."""

    def __init__(self, cin: int, cout: int, stride: int, ft: bool = False, pad_shortcut: bool = False,
                 inplace: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.ft2 = _ft(cout, ft)
        self.relu = nn.ReLU(inplace=inplace)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = (PadShortcut(cout - cin) if pad_shortcut else
                             nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout),
                                           *([FeatureWiseTransform(cout)] if ft else [])))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.ft2(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """`width` is the first stage's channel count (64 is the standard ResNet; 16 the CIFAR
    ResNet32's); each later stage doubles it and halves the resolution.

    The `cifar` stem (3x3 conv, stride 1, no pooling) suits 32 px inputs; the `imagenet`
    stem (7x7 conv stride 2, max-pool) suits 84-224 px inputs. With `ft`, feature-wise
    transformations sit where the official LFT ResNet has them (see `BasicBlock`);
    `inplace` makes the ReLUs in-place, as that code's are.
    """

    def __init__(self, blocks: list[int], num_classes: int, width: int = 64, in_channels: int = 3,
                 stem: str = "cifar", ft: bool = False, pad_shortcut: bool = False, inplace: bool = False):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=inplace), nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=inplace))
        else:
            raise ValueError(f"unknown stem {stem!r}; use one of {STEMS}")
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stages.append(nn.Sequential(*[
                BasicBlock(cin if j == 0 else cout, cout, 1 if (i == 0 or j > 0) else 2, ft, pad_shortcut, inplace)
                for j in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def feature_maps(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_maps(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


class LeNet(nn.Module):
    """LeNet-5 style (the EvoGrad rotation experiment's model): two 5x5 conv + max-pool
    layers, then 120-84-classes. `width` is the first conv's channels (6 as in LeNet-5)."""

    def __init__(self, num_classes: int, width: int = 6, in_channels: int = 1, image_size: int = 28,
                 **_ignored):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        side = ((image_size // 2) - 4) // 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
                                nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.fc(self.conv(x))


def _resnet(blocks: list[int], **fixed):
    def build(**kw):
        kw.pop("image_size", None)
        return ResNet(blocks, **fixed, **kw)
    return build


BACKBONES.register("resnet10")(_resnet([1, 1, 1, 1]))
BACKBONES.register("resnet18")(_resnet([2, 2, 2, 2]))
BACKBONES.register("resnet34")(_resnet([3, 4, 6, 3]))
BACKBONES.register("resnet32")(_resnet([5, 5, 5], pad_shortcut=True))
BACKBONES.register("lenet")(LeNet)
