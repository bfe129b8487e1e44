"""MetaXL (Xia et al., NAACL 2021): low-resource cross-lingual NER on an XLM-RoBERTa
token classifier, with a representation transformation network (RTN) as the hyperparameters.

The RTN (Linear(hidden, bottleneck) - ReLU - Linear(bottleneck, hidden [+1])) sits after
transformer layer `rtn_layer` and adds its output to the SOURCE language's hidden states
only; with `rtn_add_weights` (MetaXL's `--transfer_component_add_weights --tied`) the extra
output, through a sigmoid, gates the added vector per token. The inner loss is the source
batch through the RTN plus the small target-language batch without it (MetaXL's
loss_s + loss_g); the outer loss is a target-language batch without it, so the outer loss's
direct gradient is zero and the RTN learns only through the weights.

The model is `transformers`' XLM-RoBERTa architecture built from a config, with random
weights (no pretrained download exists offline). Dropout is OFF (probabilities 0): a
hyper-step's lookahead and the real step then see the same function, and estimators need no
shared dropout masks. Attention is the eager implementation (softmax of masked scores),
which supports double backward and forward-mode AD; padding is masked, and XLM-R's position
ids are derived from the ids inside the forward, so all of it works under
`torch.func.functional_call`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness.core.errors import ConfigError
from harness.core.params import Param, positive
from workloads.base import (HYPER_OPTIMISER_NAMES, BilevelProblem, HyperOptim, InnerOptim, Workload,
                            inner_optimizer_param)
from workloads.data import BatchStream
from workloads.metaxl_data import (IGNORE, TAGS, TokenSplit, check_panx, entity_f1, panx_splits,
                                   synthetic_splits, synthetic_vocab_needed, tag_sequences, tokenizer_vocab)

# Sizes of the named presets (backbones); `xlmr` takes them from the parameters.
PRESETS = {"xlmr-base": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072, "vocab_size": 250002}}
ARCH = ("layers", "hidden", "heads", "intermediate", "vocab_size")


class RTN(nn.Module):
    """MetaXL's "perceptron" RTN, Xavier-normal weights and zero biases as in its code."""

    def __init__(self, hidden: int, bottleneck: int, add_weights: bool):
        super().__init__()
        self.add_weights = add_weights
        self.net = nn.Sequential(nn.Linear(hidden, bottleneck), nn.ReLU(),
                                 nn.Linear(bottleneck, hidden + int(add_weights)))
        for layer in (self.net[0], self.net[2]):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor) -> Tensor:
        out = self.net(h)
        if self.add_weights:
            return torch.sigmoid(out[..., -1:]) * out[..., :-1]
        return out


def architecture(p: Mapping[str, Any], backbone: str) -> dict[str, int]:
    return {**{k: p[k] for k in ARCH}, **PRESETS.get(backbone, {})}


def rtn_position(p: Mapping[str, Any], layers: int) -> int:
    """After which transformer layer the RTN acts (0: on the embeddings); -1 = the middle."""
    return max(1, layers // 2) if p["rtn_layer"] < 0 else p["rtn_layer"]


def build_model(arch: Mapping[str, int], max_len: int, seed: int) -> nn.Module:
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    config = XLMRobertaConfig(
        vocab_size=arch["vocab_size"], hidden_size=arch["hidden"], num_hidden_layers=arch["layers"],
        num_attention_heads=arch["heads"], intermediate_size=arch["intermediate"],
        max_position_embeddings=max_len + 2, type_vocab_size=1, num_labels=len(TAGS),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return XLMRobertaForTokenClassification(config)


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over scored tokens (0 when a batch has none, e.g. a subsample)."""
    scored = (labels != IGNORE).sum().clamp_min(1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           reduction="sum") / scored


class MetaXLProblem(BilevelProblem):
    head = ("classifier.",)  # the token classifier: what the official EvoGrad perturbs

    def __init__(self, p: Mapping[str, Any], backbone: str, seed: int, device: torch.device):
        arch = architecture(p, backbone)
        sizes = {"source_train": p["source_size"], "target_train": p["target_size"],
                 "target_meta": p["target_size"], "target_dev": p["dev_size"], "target_test": p["test_size"]}
        if p["data"] == "synthetic":
            # MetaXL meta-learns on the target training sentences themselves, so the drawn
            # `target_meta` split is replaced. It is still drawn (100 short sentences) so that
            # the dev and test draws after it, and the F1 figures measured on them, stay as they are.
            splits = synthetic_splits(seed, sizes, p["max_len"])
            splits["target_meta"] = splits["target_train"]
        else:
            splits = panx_splits(p["data_root"], p["source_lang"], p["target_lang"], p["tokenizer"],
                                 p["max_len"], sizes)
        splits = {k: v.to(device) for k, v in splits.items()}
        self.dev, self.test = splits["target_dev"], splits["target_test"]
        self.synthetic = False  # the synthetic task is real data for this purpose: F1 is reported
        self.model = build_model(arch, p["max_len"], seed).to(device)
        self.model.train()
        self.rtn = RTN(arch["hidden"], p["bottleneck"], p["rtn_add_weights"]).to(device)
        self.hparams = dict(self.rtn.named_parameters())
        layer = rtn_position(p, arch["layers"])
        encoder = self.model.roberta
        self._site = encoder.embeddings if layer == 0 else encoder.encoder.layer[layer - 1]
        self._site.register_forward_hook(self._transform_hook)
        self._rtn_call: tuple[Mapping[str, Tensor], Tensor] | None = None
        self.inner = InnerOptim(kind=p["inner_optimizer"], lr=p["lr"], weight_decay=p["weight_decay"],
                                warmup=p["warmup"], schedule="linear")
        self.hyper = HyperOptim(p["hyper_optimizer"], p["hyper_lr"])
        self.train_stream = JointStream(splits["source_train"], splits["target_train"], p["source_batch_size"],
                                        p["target_batch_size"], seed=seed * 7919 + 1)
        self.val_stream = BatchStream(splits["target_meta"], p["target_batch_size"], seed=seed * 7919 + 2)

    # -- the RTN, on source rows only --------------------------------------------------
    def _transform_hook(self, module: nn.Module, args: Any, out: Any) -> Any:
        if self._rtn_call is None:
            return out
        hparams, is_source = self._rtn_call
        h = out[0] if isinstance(out, tuple) else out
        gate = is_source.to(h.dtype).view(-1, 1, 1)
        h = h + gate * functional_call(self.rtn, dict(hparams), (h,))
        return (h, *out[1:]) if isinstance(out, tuple) else h

    @contextmanager
    def _rtn(self, hparams: Mapping[str, Tensor] | None, is_source: Tensor | None):
        self._rtn_call = None if hparams is None else (hparams, is_source)
        try:
            yield
        finally:
            self._rtn_call = None

    def logits(self, weights, buffers, ids: Tensor, mask: Tensor, hparams=None, is_source=None) -> Tensor:
        with self._rtn(hparams, is_source):
            out = functional_call(self.model, (dict(weights), dict(buffers)), (),
                                  {"input_ids": ids, "attention_mask": mask})
        return out.logits

    # -- the losses ---------------------------------------------------------------------
    def train_loss(self, weights, buffers, hparams, batch) -> Tensor:
        """loss_s (source rows, through the RTN) + loss_g (target rows, without it): one
        forward in which the RTN's output is masked to the source rows."""
        ids, mask, labels, is_source = batch
        logits = self.logits(weights, buffers, ids, mask, hparams, is_source)
        src = is_source.bool()
        return token_loss(logits[src], labels[src]) + token_loss(logits[~src], labels[~src])

    def val_loss(self, weights, buffers, hparams, batch) -> Tensor:
        ids, mask, labels = batch
        return token_loss(self.logits(weights, buffers, ids, mask), labels)

    # -- metrics ------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, split: TokenSplit, chunk: int = 64) -> dict[str, float]:
        """Entity F1 (exact span and type), token accuracy and mean token loss, target
        language (no RTN), real weights."""
        loss, correct, scored, gold, pred = 0.0, 0, 0, [], []
        for i in range(0, len(split), chunk):
            ids, mask, labels = split.ids[i:i + chunk], split.mask[i:i + chunk], split.labels[i:i + chunk]
            logits = self.logits(self.weights, self.buffers, ids, mask)
            keep = labels != IGNORE
            loss += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            hat = logits.argmax(-1)
            correct += int((hat[keep] == labels[keep]).sum())
            scored += int(keep.sum())
            g, q = tag_sequences(labels.cpu(), hat.cpu())
            gold += g
            pred += q
        return {"f1": entity_f1(gold, pred), "token_accuracy": correct / max(scored, 1),
                "loss": loss / max(scored, 1)}

    def evaluate(self) -> dict[str, float]:
        test, dev = self.scores(self.test), self.scores(self.dev)
        return {"test_accuracy": test["f1"], "final_val_loss": dev["loss"], "test_token_accuracy":
                test["token_accuracy"], "dev_f1": dev["f1"]}


class JointStream:
    """Training batches of `source_batch` source sentences then `target_batch` target ones,
    as (ids, mask, labels, is_source): one tuple whose first dimension is the sentence, so
    estimators can subsample and join batches (HyperDistill) without knowing the languages."""

    def __init__(self, source: TokenSplit, target: TokenSplit, source_batch: int, target_batch: int, seed: int):
        self.source = BatchStream(source, source_batch, seed)
        self.target = BatchStream(target, target_batch, seed + 1)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s, t = next(self.source), next(self.target)
        flag = torch.cat([torch.ones(len(s[0]), dtype=torch.long, device=s[0].device),
                          torch.zeros(len(t[0]), dtype=torch.long, device=t[0].device)])
        return (*(torch.cat([a, b]) for a, b in zip(s, t)), flag)


class MetaXL(Workload):
    name = "metaxl"
    preload = ("transformers.models.xlm_roberta.modeling_xlm_roberta",)
    doc = ("MetaXL cross-lingual NER: an RTN inside an XLM-RoBERTa token classifier (random weights) "
           "transforms source-language states; seeded synthetic languages or WikiAnn files from a path")
    backbones = ("xlmr", *PRESETS)
    params = (
        Param("data", str, "synthetic", "synthetic (embedded, seeded) or panx (WikiAnn files under data_root)",
              choices=("synthetic", "panx")),
        Param("data_root", str, "", "panx: folder holding <lang>/train, dev, test (`lang:token<TAB>tag`)"),
        Param("tokenizer", str, "", "panx: a local tokenizer.json (the `tokenizers` library)"),
        Param("source_lang", str, "en", "panx: source language folder"),
        Param("target_lang", str, "qu", "panx: target language folder"),
        positive("layers", int, 2, "transformer layers (backbone xlmr)"),
        positive("hidden", int, 64, "hidden size (backbone xlmr)"),
        positive("heads", int, 4, "attention heads (backbone xlmr)"),
        positive("intermediate", int, 128, "feed-forward size (backbone xlmr)"),
        positive("vocab_size", int, 1000, "vocabulary (backbone xlmr; panx: at least the tokenizer's)"),
        Param("max_len", int, 32, "tokens per sentence with <s> and </s> (padded and truncated)",
              check=lambda v: 4 <= v <= 4096, check_doc="in [4, 4096]"),
        Param("rtn_layer", int, -1, "the RTN acts after this transformer layer (0: embeddings; -1: the middle)",
              check=lambda v: v >= -1, check_doc=">= -1"),
        positive("bottleneck", int, 32, "RTN bottleneck (MetaXL: 192 or 384 at hidden 768)"),
        Param("rtn_add_weights", bool, True, "RTN's extra output gates its vector per token (MetaXL's "
              "--transfer_component_add_weights --tied)"),
        positive("source_size", int, 2000, "source-language training sentences"),
        positive("target_size", int, 100, "target-language training sentences (also the meta set)"),
        positive("dev_size", int, 200, "target-language dev sentences (final_val_loss)"),
        positive("test_size", int, 500, "target-language test sentences (entity F1)"),
        positive("source_batch_size", int, 16, "source sentences per training batch"),
        positive("target_batch_size", int, 8, "target sentences per training and meta batch"),
        inner_optimizer_param("adamw", "MetaXL: AdamW with warm-up and linear decay"),
        positive("lr", float, 3e-3, "inner learning rate after warm-up (MetaXL, pretrained at full size: 3e-5)"),
        Param("warmup", float, 0.1, "fraction of the run with a linear warm-up, then linear decay to 0",
              check=lambda v: 0 <= v < 1, check_doc="in [0, 1)"),
        Param("weight_decay", float, 0.01, "inner (decoupled for adamw) weight decay",
              check=lambda v: v >= 0, check_doc=">= 0"),
        positive("hyper_lr", float, 1e-3, "RTN learning rate (MetaXL at full size: 1e-6)"),
        Param("hyper_optimizer", str, "adam", "RTN optimiser", choices=HYPER_OPTIMISER_NAMES),
    )

    def validate(self, params, where: str) -> None:
        if params["data"] == "panx":
            if not params["data_root"] or not params["tokenizer"]:
                raise ConfigError(f"{where}: data panx needs data_root and tokenizer (a local tokenizer.json)")
            check_panx(params["data_root"], params["source_lang"], params["target_lang"], params["tokenizer"])

    def validate_backbone(self, params, backbone: str, where: str) -> None:
        """Sizes as the backbone has them: `xlmr` from the parameters, a preset its own."""
        arch = architecture(params, backbone)
        if arch["hidden"] % arch["heads"]:
            raise ConfigError(f"{where}: hidden ({arch['hidden']}) must be a multiple of heads ({arch['heads']})")
        if params["rtn_layer"] > arch["layers"]:
            raise ConfigError(f"{where}.rtn_layer: {params['rtn_layer']} is past the last layer of "
                              f"{backbone} ({arch['layers']}); use 0..layers or -1 for the middle")
        needed, what = ((synthetic_vocab_needed(), "the synthetic languages need") if params["data"] == "synthetic"
                        else (tokenizer_vocab(params["tokenizer"]), "the tokenizer needs (its vocabulary + 4 specials)"))
        if arch["vocab_size"] < needed:
            raise ConfigError(f"{where}.vocab_size: {what} {needed} ids; {backbone} has {arch['vocab_size']}")

    def build(self, params, backbone, seed, device) -> BilevelProblem:
        return MetaXLProblem(params, backbone, seed, device)
