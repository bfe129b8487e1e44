"""Cross-domain few-shot learning with learned feature-wise transformations (LFT; Tseng et
al., ICLR 2020), as run in the EvoGrad paper.

A ResNet encoder with FT layers after each BatchNorm of its residual blocks and a
RelationNet head. Each meta-iteration picks a pseudo-seen and a pseudo-unseen domain among
the training domains: the training (candidate) loss is a pseudo-seen episode with FT active,
the validation loss a pseudo-unseen episode with FT off; the FT gamma/beta are the
hyperparameters (Adam, 1e-3), so the validation loss reaches them only through the weights.
The metric is accuracy over test episodes from a held-out domain, with its 95% interval.

Choices the description leaves open, stated: the relation head compares feature maps
(RelationNet's conv-conv-fc-fc module, padding kept so 4x4 maps work); the loss is
RelationNet's mean squared error to one-hot targets; the inner optimiser is SGD with
momentum (LFT uses Adam; the harness's lookaheads are SGD steps for every workload).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness.core.errors import ConfigError
from harness.core.params import Param, positive
from workloads.backbones import BACKBONES, STEMS, FeatureWiseTransform
from workloads.base import (HYPER_OPTIMISER_NAMES, BilevelProblem, HyperOptim, InnerOptim, Workload, eval_mode,
                            inner_optimizer_param)
from workloads.datasets import check_folder, synthetic_split
from workloads.episodes import (DIGIT_DOMAINS, DomainPairs, EpisodeShape, EpisodeStream, TensorDomain,
                                FolderDomain, digit_domains, sample_episode)

DATA = ("digits", "folders", "synthetic")


class RelationModule(nn.Module):
    """RelationNet's relation score of a (prototype, query) pair of feature maps."""

    def __init__(self, channels: int, hidden: int = 8):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(self.blocks(pairs))).squeeze(1)


class RelationNet(nn.Module):
    """Encoder + relation head; forward(episode) -> (scores [queries, n_way], query labels)."""

    def __init__(self, encoder: nn.Module, n_way: int):
        super().__init__()
        self.encoder, self.n_way = encoder, n_way
        self.relation = RelationModule(encoder.feature_dim)

    def forward(self, x: Tensor, y: Tensor, is_query: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.encoder.feature_maps(x)
        support, query = maps[~is_query], maps[is_query]
        onehot = F.one_hot(y[~is_query], self.n_way).to(maps.dtype)          # [S, N]
        protos = torch.einsum("sn,schw->nchw", onehot / onehot.sum(0).clamp_min(1), support)
        q, n = query.shape[0], self.n_way
        pairs = torch.cat([protos.unsqueeze(0).expand(q, *protos.shape),
                           query.unsqueeze(1).expand(q, n, *query.shape[1:])], dim=2)
        scores = self.relation(pairs.reshape(q * n, *pairs.shape[2:])).view(q, n)
        return scores, y[is_query]


def relation_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """MSE to one-hot, written out: `F.mse_loss`'s backward cannot carry forward-mode tangents
    (the target's implicit zero tangent is written in place), which the mixed-mode unroll
    needs; the mean of squares is the same function."""
    return (scores - F.one_hot(labels, scores.shape[1]).to(scores.dtype)).square().mean()


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def build_domains(p: Mapping[str, Any], seed: int) -> dict[str, Any]:
    names = _names(p["train_domains"]) + [p["test_domain"]]
    if p["data"] == "folders":
        return {n: FolderDomain(n, p["domain_dirs"][n], p["image_size"]) for n in names}
    if p["data"] == "synthetic":
        per_class = p["n_shot"] + p["n_query"]
        out = {}
        for i, n in enumerate(names):
            s = synthetic_split(per_class * p["num_classes"], 3, p["image_size"], p["num_classes"], seed * 101 + i)
            out[n] = TensorDomain(n, s.x, torch.arange(p["num_classes"]).repeat_interleave(per_class))
        return out
    return digit_domains(names, p["image_size"], seed)


class LFTProblem(BilevelProblem):
    def __init__(self, p: Mapping[str, Any], backbone: str, seed: int, device: torch.device):
        self.p, self.seed, self.device = p, seed, device
        self.synthetic = p["data"] == "synthetic"
        self.shape = EpisodeShape(p["n_way"], p["n_shot"], p["n_query"])
        self.domains = build_domains(p, seed)
        self.train_domains = _names(p["train_domains"])
        encoder = BACKBONES.get(backbone)(num_classes=1, width=p["width"], stem=p["stem"], ft=True)
        encoder.fc = nn.Identity()  # the relation head replaces the classifier
        self.model = RelationNet(encoder, p["n_way"]).to(device)
        self._ft = [m for m in self.model.modules() if isinstance(m, FeatureWiseTransform)]
        params = dict(self.model.named_parameters())
        self.hparams = {k: v for k, v in params.items() if ".ft" in k}
        self._weight_names = [k for k in params if k not in self.hparams]
        self.inner = InnerOptim(kind=p["inner_optimizer"], lr=p["lr"], momentum=p["momentum"],
                                weight_decay=p["weight_decay"])
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"])
        pairs = DomainPairs(self.train_domains, seed)
        self.train_stream = EpisodeStream(self.domains, pairs, 0, self.shape, seed * 7919 + 1, device)
        self.val_stream = EpisodeStream(self.domains, pairs, 1, self.shape, seed * 7919 + 2, device)

    @property
    def weights(self) -> dict[str, Tensor]:
        params = dict(self.model.named_parameters())
        return {k: params[k] for k in self._weight_names}

    @contextmanager
    def ft_active(self, on: bool):
        before = [m.active for m in self._ft]
        for m in self._ft:
            m.active = on
        try:
            yield
        finally:
            for m, b in zip(self._ft, before):
                m.active = b

    def _loss(self, weights, buffers, hparams, batch, ft: bool) -> Tensor:
        with self.ft_active(ft):
            scores, labels = functional_call(self.model, (dict(weights), dict(hparams), dict(buffers)), batch)
        return relation_loss(scores, labels)

    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        return self._loss(weights, buffers, hparams, batch, ft=True)

    def val_loss(self, weights, buffers, hparams, batch) -> Tensor:
        return self._loss(weights, buffers, hparams, batch, ft=False)

    def _episodes(self, names: list[str], count: int, salt: int):
        """The same `count` episodes at every evaluation (seeded), cycling over `names`."""
        gen = torch.Generator().manual_seed(self.seed * 104_729 + salt)
        for i in range(count):
            yield tuple(t.to(self.device) for t in sample_episode(self.domains[names[i % len(names)]],
                                                                  self.shape, gen))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        with eval_mode(self.model):  # FT layers are off in eval mode
            val = [float(relation_loss(*self.model(*ep)))
                   for ep in self._episodes(self.train_domains, self.p["val_episodes"], 1)]
            accs = []
            for ep in self._episodes([self.p["test_domain"]], self.p["test_episodes"], 2):
                scores, labels = self.model(*ep)
                accs.append(float((scores.argmax(1) == labels).float().mean()))
        acc = torch.tensor(accs, dtype=torch.float64)
        ci = 1.96 * float(acc.std()) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        ft = torch.cat([F.softplus(v.detach()).flatten() for v in self.hparams.values()])
        return {"test_accuracy": float(acc.mean()), "test_accuracy_ci95": ci,
                "final_val_loss": sum(val) / len(val), "test_domain": self.p["test_domain"],
                "ft_scale_mean": float(ft.mean())}


class LearnedFeatureWiseTransform(Workload):
    name = "lft"
    preload = ("sklearn.datasets",)
    doc = ("cross-domain few-shot learning (RelationNet) with learned feature-wise transformations; "
           "digit domains by default, image folders from paths")
    backbones = ("resnet10", "resnet18", "resnet34")
    params = (
        Param("data", str, "digits", "digits (embedded domains), folders (domain_dirs), synthetic (cost only)",
              choices=DATA),
        Param("train_domains", str, "original,inverted,rotated,noisy,blurred",
              "comma-separated training domains (pseudo-seen and pseudo-unseen are drawn from these)"),
        Param("test_domain", str, "tinted", "the held-out meta-test domain"),
        Param("domain_dirs", dict, {}, "data: folders: domain name -> image folder (one sub-folder per class)"),
        positive("n_way", int, 5, "classes per episode"),
        positive("n_shot", int, 5, "support images per class"),
        positive("n_query", int, 16, "query images per class"),
        positive("width", int, 16, "channels of the first ResNet stage (64 = standard)"),
        Param("stem", str, "cifar", "ResNet stem (imagenet for 84-224 px)", choices=STEMS),
        Param("image_size", int, 32, "image side in pixels", check=lambda v: v >= 8, check_doc=">= 8"),
        inner_optimizer_param("adam", "the LFT code: Adam 1e-3"),
        positive("lr", float, 1e-3, "inner learning rate"),
        Param("momentum", float, 0.9, "inner SGD momentum (sgd only)", check=lambda v: 0 <= v < 1,
              check_doc="in [0, 1)"),
        Param("weight_decay", float, 0.0, "inner weight decay", check=lambda v: v >= 0, check_doc=">= 0"),
        positive("hyper_lr", float, 1e-3, "FT learning rate"),
        Param("hyper_optimizer", str, "adam", "FT optimiser", choices=HYPER_OPTIMISER_NAMES),
        positive("test_episodes", int, 100, "meta-test episodes from the held-out domain"),
        positive("val_episodes", int, 20, "episodes of the reported validation loss (training domains, FT off)"),
        positive("num_classes", int, 10, "synthetic data: classes per domain"),
    )

    def validate(self, params, where: str) -> None:
        train, test = _names(params["train_domains"]), params["test_domain"]
        if len(train) < 2:
            raise ConfigError(f"{where}.train_domains: needs at least two domains (pseudo-seen and "
                              f"pseudo-unseen), got {params['train_domains']!r}")
        if test in train:
            raise ConfigError(f"{where}.test_domain: {test!r} is also a training domain; hold it out")
        if params["data"] == "digits":
            for n in train + [test]:
                if n not in DIGIT_DOMAINS:
                    raise ConfigError(f"{where}: {n!r} is not a digits domain (known: {', '.join(DIGIT_DOMAINS)})")
            if params["n_way"] > 10:
                raise ConfigError(f"{where}.n_way: {params['n_way']} > the digits' 10 classes")
        elif params["data"] == "folders":
            for n in train + [test]:
                path = params["domain_dirs"].get(n)
                if not isinstance(path, str):
                    raise ConfigError(f"{where}.domain_dirs.{n}: missing; give the image folder of domain {n!r}")
                check_folder(path, f"{where}.domain_dirs.{n}")
        elif params["n_way"] > params["num_classes"]:
            raise ConfigError(f"{where}.n_way: {params['n_way']} > num_classes {params['num_classes']}")

    def build(self, params, backbone, seed, device) -> BilevelProblem:
        return LFTProblem(params, backbone, seed, device)
