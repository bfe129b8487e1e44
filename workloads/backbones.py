"""ResNet backbones with a width multiplier (BasicBlock family: ResNet10/18/34)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from harness.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """`width` is the first stage's channel count (64 is the standard ResNet).

    The `cifar` stem (3x3 conv, stride 1, no pooling) suits 32 px inputs; the `imagenet`
    stem (7x7 conv stride 2, max-pool) suits 84-224 px inputs.
    """

    def __init__(self, blocks: list[int], num_classes: int, width: int = 64,
                 in_channels: int = 3, stem: str = "cifar"):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
        else:
            raise ValueError(f"unknown stem {stem!r}; use one of {STEMS}")
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            layers = [BasicBlock(cin if j == 0 else cout, cout, 1 if (i == 0 or j > 0) else 2)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def _resnet(blocks: list[int]):
    return lambda **kw: ResNet(blocks, **kw)


BACKBONES.register("resnet10")(_resnet([1, 1, 1, 1]))
BACKBONES.register("resnet18")(_resnet([2, 2, 2, 2]))
BACKBONES.register("resnet34")(_resnet([3, 4, 6, 3]))
