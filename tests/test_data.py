"""The embedded digits data, label noise, splits and batch streams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.backbones import BACKBONES
from workloads.data import BatchStream, Split, corrupt_labels, load_digits_images, stratified_split
from workloads.mwn import make_splits
from harness.core.params import resolve
from workloads import WORKLOADS


def test_digits_are_real_and_shaped_for_cnns():
    x, y = load_digits_images(size=32, channels=3)
    assert x.shape == (1797, 3, 32, 32) and y.shape == (1797,)
    assert set(y.tolist()) == set(range(10))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


@pytest.mark.parametrize("kind", ["unif", "flip", "flip2"])
def test_label_noise_rates_and_structure(kind):
    y = torch.arange(10).repeat(500)
    noisy = corrupt_labels(y, kind, 0.4, 10, np.random.default_rng(0))
    changed = float((noisy != y).float().mean())
    # unif may redraw the true class: expected changed fraction 0.4 * 9/10
    expected = 0.36 if kind == "unif" else 0.4
    assert abs(changed - expected) < 0.03
    targets_per_class = [len(set(noisy[(y == c) & (noisy != y)].tolist())) for c in range(10)]
    if kind == "flip":
        assert max(targets_per_class) == 1
    elif kind == "flip2":
        assert max(targets_per_class) == 2
    else:
        assert min(targets_per_class) == 9


def test_mwn_splits_are_disjoint_stratified_and_only_training_labels_are_noisy():
    p = resolve(WORKLOADS.get("mwn").params, {}, "mwn")
    s = make_splits(p, seed=0)
    assert len(s["meta"]) == 100 and len(s["test"]) == 400 and len(s["train"]) == 1797 - 500
    assert torch.bincount(s["meta"].y).tolist() == [10] * 10
    assert torch.bincount(s["test"].y).tolist() == [40] * 10
    x_all = torch.cat([s["meta"].x, s["test"].x, s["train"].x]).flatten(1)
    assert torch.unique(x_all, dim=0).shape[0] >= 1797 - 50  # digits has a few duplicate images
    noisy = float((s["train"].y != s["train_clean_labels"].y).float().mean())
    assert 0.3 < noisy < 0.42
    again = make_splits(p, seed=0)
    assert torch.equal(again["train"].y, s["train"].y)
    other = make_splits(p, seed=1)
    assert not torch.equal(other["train"].y, s["train"].y)


def test_idx_split_leftover_holds_the_rest():
    y = torch.arange(5).repeat(4)
    a, rest = stratified_split(y, [1], np.random.default_rng(0))
    assert len(a) == 5 and len(rest) == 15 and not set(a.tolist()) & set(rest.tolist())


def test_batch_stream_visits_every_sample_once_per_epoch_and_repeats_by_seed():
    split = Split(torch.arange(10).float().unsqueeze(1), torch.arange(10))
    stream = BatchStream(split, 5, seed=3)
    epoch = torch.cat([next(stream)[1] for _ in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))
    same = BatchStream(split, 5, seed=3)
    assert torch.equal(torch.cat([next(same)[1] for _ in range(2)]), epoch)


@pytest.mark.parametrize("name,blocks", [("resnet10", 4), ("resnet18", 8), ("resnet34", 16)])
def test_resnet_depths_and_width(name, blocks):
    from workloads.backbones import BasicBlock
    net = BACKBONES.get(name)(num_classes=10, width=8)
    assert sum(isinstance(m, BasicBlock) for m in net.modules()) == blocks
    assert net.fc.in_features == 64
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
