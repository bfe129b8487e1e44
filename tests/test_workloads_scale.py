"""Paper-scale workloads: the ResNet family and FT layers, LFT episodes, the learned
rotation, CIFAR / MNIST / image folders from disk, synthetic data, the scaling and paper
suites, and the memory frontier."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from estimators import ESTIMATORS, make_estimator
from harness.core.errors import ConfigError
from harness.core.units import parse_size
from harness.report.frontier import frontier
from harness.train.metaloop import MetaTrainer
from harness.core.params import resolve
from harness.plan.suite import build_suite, find_suite, load_suite
from tests.datasets_on_disk import write_cifar10, write_image_folder, write_mnist
from workloads import WORKLOADS
from workloads.backbones import BACKBONES, FeatureWiseTransform
from workloads.datasets import synthetic_split
from workloads.episodes import EpisodeShape, TensorDomain, sample_episode

CPU = torch.device("cpu")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build(workload: str, params: dict, backbone: str | None = None, seed: int = 0):
    w = WORKLOADS.get(workload)
    p = resolve(w.params, params, workload)
    w.validate(p, workload)
    return w.build(p, backbone or w.default_backbone(p), seed, CPU)


def estimator(name: str, **params):
    return make_estimator(name, resolve(ESTIMATORS.get(name).params, params, name), 0)


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_imagenet_resnets_have_torchvisions_parameter_count(name):
    import torchvision

    ours = BACKBONES.get(name)(num_classes=1000, width=64, stem="imagenet")
    theirs = getattr(torchvision.models, name)(weights=None)
    assert n_params(ours) == n_params(theirs)
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())


def test_resnet32_is_the_cifar_resnet():
    model = BACKBONES.get("resnet32")(num_classes=10, width=16)
    assert n_params(model) == 464_154  # He et al.'s ResNet-32 (option A shortcuts): 0.46M
    assert len(model.stages) == 3 and all(len(s) == 5 for s in model.stages)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_ft_layers_perturb_in_train_mode_only():
    torch.manual_seed(0)
    ft = FeatureWiseTransform(4)
    assert ft.gamma.shape == ft.beta.shape == (1, 4, 1, 1)
    x = torch.randn(3, 4, 5, 5)
    assert not torch.allclose(ft(x), x)
    ft.eval()
    assert torch.equal(ft(x), x)
    ft.train()
    ft.active = False
    assert torch.equal(ft(x), x)


def test_ft_backbone_puts_an_ft_at_each_blocks_end_and_on_each_shortcut_batchnorm():
    """The official LFT ResNet: SimpleBlock's BN2 and BNshortcut are FT layers, BN1 is not."""
    model = BACKBONES.get("resnet18")(num_classes=5, width=8, ft=True)
    fts = [m for m in model.modules() if isinstance(m, FeatureWiseTransform)]
    assert len(fts) == 8 + 3  # one per block of ResNet18's 8, one per projection shortcut (3)
    for block in (m for m in model.modules() if type(m).__name__ == "BasicBlock"):
        assert isinstance(block.ft2, FeatureWiseTransform) and not hasattr(block, "ft1")
    plain = BACKBONES.get("resnet18")(num_classes=5, width=8)
    assert n_params(model) - n_params(plain) == sum(n_params(f) for f in fts)


# ---------------------------------------------------------------- LFT

def indexed_domain(classes: int, per_class: int) -> TensorDomain:
    """Image i is filled with the value i, so an episode's images reveal which were drawn."""
    n = classes * per_class
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    return TensorDomain("indexed", images, torch.arange(classes).repeat_interleave(per_class))


def test_episodes_have_the_right_shapes_labels_and_disjoint_support_and_query():
    domain = indexed_domain(classes=8, per_class=30)
    shape = EpisodeShape(n_way=5, n_shot=5, n_query=16)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y, is_query = sample_episode(domain, shape, gen)
        assert x.shape == (5 * 21, 3, 4, 4) and y.shape == is_query.shape == (105,)
        assert int(is_query.sum()) == 80 and set(y.tolist()) == set(range(5))
        assert all(int((y[~is_query] == c).sum()) == 5 and int((y[is_query] == c).sum()) == 16 for c in range(5))
        ids = x[:, 0, 0, 0].long()
        assert len(set(ids.tolist())) == 105  # no image twice, so support and query are disjoint
        true_class = domain.labels[ids]
        for c in range(5):  # each relabelled class is one original class
            assert len(set(true_class[y == c].tolist())) == 1


def test_episode_needs_enough_classes():
    with pytest.raises(ValueError, match="5-way episode needs 5"):
        sample_episode(indexed_domain(3, 30), EpisodeShape(5, 1, 1), torch.Generator())


def test_lft_ft_is_active_in_the_training_loss_and_off_in_the_validation_loss():
    problem = build("lft", {"width": 4, "n_query": 2, "test_episodes": 2, "val_episodes": 1})
    batch = next(problem.train_stream)
    w, b, h = problem.weights, problem.buffers, problem.hparams
    assert set(h) and not set(h) & set(w) and all(".ft2." in k or ".shortcut.2." in k for k in h)
    torch.manual_seed(0)
    t1, t2 = problem.train_loss(w, b, h, batch), problem.train_loss(w, b, h, batch)
    assert not torch.equal(t1, t2)  # FT noise is drawn on each forward
    v1, v2 = problem.val_loss(w, b, h, batch), problem.val_loss(w, b, h, batch)
    assert torch.equal(v1, v2)
    assert torch.autograd.grad(t1, list(h.values()))[0].abs().sum() > 0
    assert all(g is None for g in torch.autograd.grad(v1, list(h.values()), allow_unused=True))


def test_lft_meta_trains_every_estimator_and_reports_test_accuracy_with_ci():
    problem = build("lft", {"width": 4, "n_query": 3, "test_episodes": 4, "val_episodes": 2})
    before = {k: v.detach().clone() for k, v in problem.hparams.items()}
    for name, params in (("unroll", {"backend": "higher"}), ("t1t2", {"mode": "fd"}), ("evograd", {}),
                         ("hyperdistill", {"unit_direction": True}), ("neumann", {})):
        trainer = MetaTrainer(problem, estimator(name, **params), 10)
        trainer.iteration()
        trainer.check_finite()
    assert any(not torch.equal(before[k], v) for k, v in problem.hparams.items())
    metrics = problem.evaluate()
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_accuracy_ci95"] > 0
    assert metrics["test_domain"] == "tinted"
    assert problem.evaluate()["test_accuracy"] == metrics["test_accuracy"]  # fixed test episodes


def test_the_pseudo_seen_and_unseen_domains_differ_and_match_across_streams():
    problem = build("lft", {"width": 4, "n_query": 2})
    pairs = [problem.train_stream.pairs.pair(i) for i in range(50)]
    assert all(a != b for a, b in pairs) and len(set(pairs)) > 5
    assert problem.train_stream.pairs is problem.val_stream.pairs


@pytest.mark.parametrize("params, message", [
    ({"test_domain": "original"}, "also a training domain"),
    ({"train_domains": "original"}, "at least two domains"),
    ({"train_domains": "original,sepia"}, "'sepia' is not a digits domain"),
    ({"n_way": 11}, "n_way"),
    ({"data": "folders"}, "domain_dirs"),
])
def test_lft_settings_are_checked_when_the_suite_loads(params, message):
    raw = {"workloads": [{"name": "lft", "params": params}], "estimators": ["plain"]}
    with pytest.raises(ConfigError, match=message):
        build_suite(raw)


def test_lft_reads_domains_from_image_folders(tmp_path):
    dirs = {name: str(write_image_folder(tmp_path / name, classes=3, per_class=2, seed=i))
            for i, name in enumerate(("a", "b", "c"))}
    problem = build("lft", {"data": "folders", "domain_dirs": dirs, "train_domains": "a,b", "test_domain": "c",
                            "n_way": 3, "n_shot": 1, "n_query": 1, "image_size": 32, "width": 4,
                            "test_episodes": 2, "val_episodes": 1})
    x, y, is_query = next(problem.train_stream)
    assert x.shape == (6, 3, 32, 32)
    trainer = MetaTrainer(problem, estimator("unroll"), 10)
    trainer.iteration()
    assert 0 <= problem.evaluate()["test_accuracy"] <= 1
    missing = {"workloads": [{"name": "lft", "params": {"data": "folders", "train_domains": "a,b",
                                                        "test_domain": "c",
                                                        "domain_dirs": {**dirs, "c": str(tmp_path / "nope")}}}],
               "estimators": ["plain"]}
    with pytest.raises(ConfigError, match="nope is not an image folder"):
        build_suite(missing)


# ---------------------------------------------------------------- rotation

@pytest.mark.parametrize("angle", [30.0, -45.0, 90.0, 7.5])
def test_rotation_matches_torchvision_rotate(angle):
    import torchvision.transforms.functional as TF

    from workloads.rotation import rotate
    x = torch.rand(4, 2, 20, 28)
    ours = rotate(x, torch.tensor(angle))
    theirs = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert (ours - theirs).abs().max() < 1e-4  # the same bilinear samples, up to float rounding
    assert (ours - TF.rotate(x, -angle, interpolation=TF.InterpolationMode.BILINEAR)).abs().max() > 0.05


def test_rotation_hypergradient_reaches_the_angle_and_learning_moves_it():
    problem = build("rotation", {"batch_size": 32})
    trainer = MetaTrainer(problem, estimator("unroll"), 100)
    angle0 = float(problem.hparams["angle"].detach())
    for _ in range(5):
        trainer.iteration()
    assert float(problem.hparams["angle"].detach()) != angle0
    metrics = problem.evaluate()
    assert metrics["learned_angle_deg"] == float(problem.hparams["angle"].detach())
    assert 0 <= metrics["test_accuracy"] <= 1


def test_rotation_reads_mnist_from_disk(tmp_path):
    root = write_mnist(tmp_path / "mnist")
    problem = build("rotation", {"data": "mnist", "data_root": str(root), "val_per_class": 2})
    assert len(problem.test_split) == 50 and problem.test_split.x.shape[1:] == (1, 28, 28)
    with pytest.raises(ConfigError, match=r"no MNIST at .*nowhere.*download: true"):
        build_suite({"workloads": [{"name": "rotation", "params": {"data": "mnist",
                                                                   "data_root": str(tmp_path / "nowhere")}}],
                     "estimators": ["plain"]})


# ---------------------------------------------------------------- CIFAR and synthetic

def test_mwn_reads_cifar10_in_its_on_disk_format(tmp_path):
    root = write_cifar10(tmp_path / "c")
    suite = build_suite({"workloads": [{"name": "mwn", "params": {"data": "cifar10", "data_root": str(root),
                                                                  "meta_per_class": 2, "width": 4}}],
                         "estimators": ["plain"]})
    assert suite.cells[0].backbone == "resnet32"  # MW-Net's network is the default on CIFAR
    problem = build("mwn", {"data": "cifar10", "data_root": str(root), "meta_per_class": 2, "width": 4})
    assert len(problem.test_split) == 30 and len(problem.meta_split) == 20 and len(problem.train_split) == 80
    assert problem.train_split.x.shape[1:] == (3, 32, 32)
    assert abs(float(problem.test_split.x.mean())) < 0.5  # standardised
    MetaTrainer(problem, estimator("unroll"), 10).iteration()


def test_a_missing_dataset_is_one_line_naming_the_path(tmp_path, capsys):
    from harness.cli import main
    suite = tmp_path / "s.yaml"
    suite.write_text(f"workloads: [{{name: mwn, params: {{data: cifar100, data_root: {tmp_path / 'nowhere'}}}}}]\n"
                     "estimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(tmp_path / "nowhere" / "cifar-100-python") in err and "download: true" in err


def test_synthetic_data_is_seeded():
    a, b, c = synthetic_split(50, 3, 16, 7, 1), synthetic_split(50, 3, 16, 7, 1), synthetic_split(50, 3, 16, 7, 2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (50, 3, 16, 16) and int(a.y.max()) < 7


def test_synthetic_rows_are_marked_and_report_no_accuracy(tmp_path):
    from harness.cli import main
    suite = tmp_path / "s.yaml"
    suite.write_text("train_steps: 2\nwarmup_steps: 0\ntimed_steps: 1\ncurve_points: 0\n"
                     "workloads: [{name: mwn, params: {data: synthetic, image_size: 16, channels: 1, "
                     "num_classes: 4, synthetic_size: 200, width: 4, batch_size: 8}}]\n"
                     "estimators: [plain]\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--in-process", "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "o" / "results.csv").iloc[0]
    assert row["status"] == "ok" and bool(row["synthetic"]) and row["batch_size"] == 8
    assert pd.isna(pd.read_csv(tmp_path / "o" / "summary.csv")["acc_mean"].iloc[0])


# ---------------------------------------------------------------- suites

def test_scaling_suite_covers_every_estimator_backbone_and_workload():
    cells = load_suite(find_suite("scaling")).cells
    builtin = {name for name, cls in ESTIMATORS if cls.__module__.startswith("estimators.")}
    assert {c.estimator for c in cells} == builtin  # (tests register fault estimators too)
    assert {(c.workload, c.backbone) for c in cells} == {
        (w, b) for w in ("mwn", "lft") for b in ("resnet10", "resnet18", "resnet34")}
    assert all(c.train_steps == 0 for c in cells)


def test_paper_suite_names_its_missing_data_and_loads_with_data(tmp_path):
    with pytest.raises(ConfigError, match="data_root: no CIFAR10 at data/cifar"):
        load_suite(find_suite("paper"))
    cifar, mnist = write_cifar10(tmp_path / "cifar"), write_mnist(tmp_path / "mnist")
    dirs = {n: str(write_image_folder(tmp_path / n, 5, 2)) for n in
            ("miniImageNet", "cars", "places", "plantae", "cub")}
    sets = [f"workloads.0.params.data_root={cifar}", f"workloads.2.params.data_root={mnist}"]
    sets += [f"workloads.1.params.domain_dirs.{n}={p}" for n, p in dirs.items()]
    suite = load_suite(find_suite("paper"), sets)
    assert len(suite.cells) == 3 * (1 + 3 + 1) * 7  # (EvoGrad twice: also as the LFT code runs it)
    assert {c.backbone for c in suite.cells if c.workload == "mwn"} == {"resnet32"}


# ---------------------------------------------------------------- memory frontier

@pytest.mark.parametrize("text, expected", [("512MB", 512 * 10 ** 6), ("1.5GB", 1_500_000_000),
                                            ("8GiB", 8 * 2 ** 30), (4096, 4096), ("100", 100)])
def test_sizes_parse(text, expected):
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True, "1.5XB"])
def test_bad_sizes_are_errors_naming_the_field(bad):
    with pytest.raises(ConfigError, match="memory_frontier"):
        parse_size(bad, "suite.memory_frontier[0]")


def test_frontier_picks_the_deepest_backbone_then_the_largest_batch_that_fits():
    rows = []
    for variant, scale in (("cheap", 1.0), ("dear", 3.0)):
        for depth in (10, 18, 34):
            for batch in (32, 64):
                rows.append({"workload": "mwn", "variant": variant, "status": "ok", "depth": float(depth),
                             "backbone": f"resnet{depth}", "batch_size": batch,
                             "peak_mb": scale * depth * batch / 32})
    rows.append({"workload": "mwn", "variant": "dear", "status": "oom", "depth": 10.0, "backbone": "resnet10",
                 "batch_size": 16, "peak_mb": 1.0})
    table = frontier(pd.DataFrame(rows), [20 * 2 ** 20, 40 * 2 ** 20, 200 * 2 ** 20]).set_index(
        ["variant", "budget_bytes"])
    assert table.loc[("cheap", 20 * 2 ** 20), "backbone"] == "resnet18"      # 18 MB fits, 34 does not
    assert table.loc[("cheap", 20 * 2 ** 20), "batch_size"] == 32
    assert table.loc[("cheap", 40 * 2 ** 20), ["backbone", "batch_size"]].tolist() == ["resnet34", 32]
    assert table.loc[("cheap", 200 * 2 ** 20), "batch_size"] == 64
    assert pd.isna(table.loc[("dear", 20 * 2 ** 20), "backbone"])            # an oom cell never fits
    assert math.isnan(table.loc[("dear", 20 * 2 ** 20), "depth"])
    assert table.loc[("dear", 40 * 2 ** 20), "backbone"] == "resnet10"


def test_frontier_ranks_models_without_a_depth_by_their_parameters():
    """Transformer sizes share one backbone name: the frontier picks the most parameters and
    names the size by its setting."""
    rows = [{"workload_label": f"metaxl(layers={n})", "workload": "metaxl", "variant": "plain", "status": "ok",
             "depth": math.nan, "backbone": "xlmr", "n_params": n * 1e6, "batch_size": 24, "peak_mb": 10.0 * n}
            for n in (2, 6, 12)]
    table = frontier(pd.DataFrame(rows), [70 * 2 ** 20, 200 * 2 ** 20]).set_index("budget_bytes")
    assert table.loc[70 * 2 ** 20, "backbone"] == "xlmr(layers=6)"
    assert table.loc[200 * 2 ** 20, "backbone"] == "xlmr(layers=12)" and table.loc[200 * 2 ** 20, "n_params"] == 12e6
