"""The MetaXL workload: its data, its F1, where the RTN acts, and its hypergradient against
a one-step lookahead written here from the model's own modules."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from estimators import ESTIMATORS
from harness.core.errors import ConfigError
from harness.plan.suite import build_suite
from harness.train.metaloop import MetaTrainer
from tests.helpers import build, estimator, inputs_for, rel_err
from workloads.metaxl_data import (IGNORE, TAGS, entities, entity_f1, read_panx, synthetic_splits,
                                   tag_sequences)

TINY = {"layers": 2, "hidden": 16, "heads": 2, "intermediate": 32, "bottleneck": 8, "max_len": 24,
        "source_size": 64, "target_size": 16, "dev_size": 16, "test_size": 16,
        "source_batch_size": 4, "target_batch_size": 3}


def tiny(seed: int = 0, **params):
    return build("metaxl", "xlmr", seed, **{**TINY, **params})


# ------------------------------------------------------------------ F1 on hand-made tags

@pytest.mark.parametrize("gold,pred,f1", [
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]], 1.0),
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]], 0.5),     # type wrong
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]], 0.5),         # span short
    ([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]], 1.0),                        # I- after O opens
    ([["B-ORG", "O"], ["B-LOC", "I-LOC"]], [["O", "O"], ["B-LOC", "I-LOC"]], 2 * (1 * 0.5) / 1.5),
    ([["O", "O"]], [["O", "O"]], 0.0),
    ([["B-PER", "B-PER"]], [["B-PER", "I-PER"]], 0.0),                                  # 2 gold, 1 pred span
])
def test_entity_f1_on_hand_made_examples(gold, pred, f1):
    assert entity_f1(gold, pred) == pytest.approx(f1)


def test_chunks_follow_conlleval():
    assert entities(["B-PER", "I-LOC", "I-LOC", "O", "I-ORG"]) == {("PER", 0, 1), ("LOC", 1, 3), ("ORG", 4, 5)}


def test_tag_sequences_skip_unscored_positions():
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2, 0, IGNORE]])
    pred = torch.tensor([[5, 1, 6, 2, 3, 0]])
    gold, hat = tag_sequences(labels, pred)
    assert gold == [["B-PER", "I-PER", "O"]] and hat == [["B-PER", "I-PER", TAGS[3]]]


# ------------------------------------------------------------------ the synthetic languages

def test_synthetic_data_is_deterministic_per_seed_and_differs_across_seeds():
    sizes = {"source_train": 20, "target_train": 10}
    a, b, c = (synthetic_splits(s, sizes, 32) for s in (0, 0, 1))
    assert all(torch.equal(getattr(a[k], f), getattr(b[k], f)) for k in sizes for f in ("ids", "mask", "labels"))
    assert not torch.equal(a["source_train"].ids, c["source_train"].ids)


def test_synthetic_languages_share_only_names_and_differ_in_word_order():
    s = synthetic_splits(0, {"source_train": 300, "target_train": 300}, 32)
    src, tgt = s["source_train"], s["target_train"]
    words = lambda split, keep: set(split.ids[keep].tolist())
    src_o, tgt_o = words(src, src.labels == 0), words(tgt, tgt.labels == 0)
    assert not src_o & tgt_o                                         # no shared context word
    src_ent, tgt_ent = words(src, src.labels > 0), words(tgt, tgt.labels > 0)
    assert src_ent & tgt_ent and tgt_ent - src_ent                   # some names shared, not all

    def cue_before_entity(split) -> float:
        """How often an entity's first tag follows an O word that also occurs right after
        entities: a proxy for "the cue is before"."""
        lab = split.labels
        b_pos = (lab == 1) | (lab == 3) | (lab == 5)
        before = torch.zeros_like(b_pos)
        before[:, :-1] = b_pos[:, 1:]
        return float((lab[before] == 0).float().mean())
    assert cue_before_entity(src) > cue_before_entity(tgt)


# ------------------------------------------------------------------ the RTN

def test_the_rtn_touches_source_states_only():
    problem = tiny()
    ids, mask, labels, is_source = next(problem.train_stream)
    lam = problem.hparams
    with_rtn = problem.logits(problem.weights, problem.buffers, ids, mask, lam, is_source)
    without = problem.logits(problem.weights, problem.buffers, ids, mask)
    src = is_source.bool()
    assert torch.equal(with_rtn[~src], without[~src])
    assert not torch.allclose(with_rtn[src], without[src])
    # the training loss of a target-only batch, and the validation loss, do not reach the RTN
    target_only = tuple(t[~src] for t in (ids, mask, labels, is_source))
    for loss in (problem.train_loss(problem.weights, problem.buffers, lam, target_only),
                 problem.val_loss(problem.weights, problem.buffers, lam, next(problem.val_stream))):
        grads = torch.autograd.grad(loss, list(lam.values()), allow_unused=True)
        assert all(g is None or not g.any() for g in grads)


def test_padding_does_not_change_real_tokens_under_functional_calls():
    problem = tiny()
    ids, mask, labels, _ = next(problem.train_stream)
    noisy = ids.clone()
    noisy[mask == 0] = 7                      # another id where the mask hides it
    a = problem.logits(problem.weights, problem.buffers, ids, mask)
    b = problem.logits(problem.weights, problem.buffers, noisy, mask)
    # XLM-R derives position ids from the padding id; changing masked ids may move positions
    # only of masked tokens, never of real ones
    assert torch.allclose(a[mask == 1], b[mask == 1], atol=1e-5)


def _independent_lookahead_hypergradient(problem, batch, val_batch, lr):
    """-> d Lval(w - lr grad_w Ltrain(w, lam)) / d lam, written from the model's own modules:
    a forward hook added here computes the RTN from lam by explicit matrix products."""
    model = problem.model
    lam = {k: v.detach().clone().requires_grad_() for k, v in problem.hparams.items()}
    w = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    ids, mask, labels, is_source = batch
    layer = model.roberta.encoder.layer[0]      # layers=2: the middle is after the first

    def rtn(h):
        z = torch.relu(h @ lam["net.0.weight"].T + lam["net.0.bias"]) @ lam["net.2.weight"].T + lam["net.2.bias"]
        return torch.sigmoid(z[..., -1:]) * z[..., :-1]

    def ce(logits, y):
        keep = y != IGNORE
        return F.cross_entropy(logits[keep], y[keep])

    src = is_source.bool()
    # (the workload's own hook stays registered but is idle outside its logits(): ours acts)
    handle = layer.register_forward_hook(lambda m, a, out: out + rtn(out))
    try:
        loss_s = ce(functional_call(model, w, (), {"input_ids": ids[src], "attention_mask": mask[src]}).logits,
                    labels[src])
    finally:
        handle.remove()
    loss_g = ce(functional_call(model, w, (), {"input_ids": ids[~src], "attention_mask": mask[~src]}).logits,
                labels[~src])
    g = torch.autograd.grad(loss_s + loss_g, list(w.values()), create_graph=True)
    w1 = {k: v - lr * gi for (k, v), gi in zip(w.items(), g)}
    vi, vm, vl = val_batch
    val = ce(functional_call(model, w1, (), {"input_ids": vi, "attention_mask": vm}).logits, vl)
    return dict(zip(lam, torch.autograd.grad(val, list(lam.values()))))


def test_unroll_t1_equals_an_independent_one_step_lookahead():
    problem = tiny()
    trainer = MetaTrainer(problem, estimator("plain"), total_steps=50)
    for _ in range(3):
        trainer.iteration()
    inputs = inputs_for(trainer)
    got = estimator("unroll", T=1).hypergradient(inputs)
    want = _independent_lookahead_hypergradient(problem, inputs.train_batches[0], inputs.val_batch, inputs.lr)
    assert rel_err(got, want) < 1e-4


def test_every_estimator_runs_a_meta_iteration_and_moves_the_rtn():
    for name, cls in ESTIMATORS:
        if not cls.__module__.startswith("estimators."):
            continue
        problem = tiny()
        before = {k: v.detach().clone() for k, v in problem.hparams.items()}
        trainer = MetaTrainer(problem, estimator(name), total_steps=20)
        for _ in range(2):
            trainer.iteration()
        trainer.check_finite()
        moved = any(not torch.equal(before[k], v) for k, v in problem.hparams.items())
        assert moved == (name != "plain"), name
    metrics = problem.evaluate()
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["test_token_accuracy"] <= 1


# ------------------------------------------------------------------ real files

def _write_panx(root, lang, split, lines):
    (root / lang).mkdir(parents=True, exist_ok=True)
    (root / lang / split).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tokenizer(path, words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


SENT = ["en:John\tB-PER", "en:Smith\tI-PER", "en:visited\tO", "en:Paris\tB-LOC", ""]


def _panx_root(tmp_path):
    root = tmp_path / "panx"
    for lang in ("en", "qu"):
        for split in ("train", "dev", "test"):
            _write_panx(root, lang, split, [line.replace("en:", f"{lang}:") for line in SENT * 3])
    _tokenizer(tmp_path / "tokenizer.json", ["John", "Smith", "visited", "Paris"])
    return root


def test_metaxl_reads_wikiann_files_with_a_local_tokenizer(tmp_path):
    root = _panx_root(tmp_path)
    problem = tiny(data="panx", data_root=str(root), tokenizer=str(tmp_path / "tokenizer.json"))
    ids, mask, labels, is_source = next(problem.train_stream)
    assert int(ids.max()) < 4 + 5 and int(ids[mask == 1].min()) >= 0
    first = labels[0][labels[0] != IGNORE].tolist()
    assert first == [1, 2, 0, 5]                       # B-PER I-PER O B-LOC
    trainer = MetaTrainer(problem, estimator("t1t2"), total_steps=5)
    trainer.iteration()
    trainer.check_finite()


@pytest.mark.parametrize("bad,message", [
    ("en:John B-PER", "train:2: expected `lang:token<TAB>tag`"),
    ("John\tB-PER", "train:2: expected `lang:token<TAB>tag`"),
    ("en:John\tB-FOO", "train:2: expected `lang:token<TAB>tag`"),
])
def test_a_malformed_wikiann_line_is_one_line_naming_file_and_line(tmp_path, bad, message):
    root = _panx_root(tmp_path)
    _write_panx(root, "en", "train", [SENT[0], bad, ""])
    suite = {"workloads": [{"name": "metaxl", "params": {"data": "panx", "data_root": str(root),
                                                          "tokenizer": str(tmp_path / "tokenizer.json")}}],
             "estimators": ["plain"]}
    with pytest.raises(ConfigError) as e:
        build_suite(suite)
    text = str(e.value)
    assert message in text and str(root / "en" / "train") in text and "\n" not in text


def test_missing_wikiann_files_and_tokenizer_are_named(tmp_path):
    root = _panx_root(tmp_path)
    (root / "qu" / "dev").unlink()
    with pytest.raises(ConfigError, match="qu/dev: no such file"):
        read_panx(root / "qu" / "dev")
    entry = {"name": "metaxl", "params": {"data": "panx", "data_root": str(root), "tokenizer": str(tmp_path / "nope.json")}}
    with pytest.raises(ConfigError, match="nope.json: no such file"):
        build_suite({"workloads": [entry], "estimators": ["plain"]})


@pytest.mark.parametrize("params,message", [
    ({"hidden": 30, "heads": 4}, "multiple of heads"),
    ({"rtn_layer": 3}, "past the last layer"),
    ({"vocab_size": 100}, "synthetic languages need 511 ids; xlmr has 100"),
])
def test_metaxl_settings_are_checked_when_the_suite_loads(params, message):
    with pytest.raises(ConfigError, match=message):
        build_suite({"workloads": [{"name": "metaxl", "params": params}], "estimators": ["plain"]})


def test_a_preset_backbone_is_checked_with_its_own_sizes():
    """rtn_layer 12 is past a 2-layer `xlmr` but fine on the 12-layer preset; a small
    vocab_size setting does not apply to the preset's own vocabulary."""
    entry = {"name": "metaxl", "backbone": "xlmr-base", "params": {"rtn_layer": 12, "vocab_size": 100}}
    assert len(build_suite({"workloads": [entry], "estimators": ["plain"]}).cells) == 1
    with pytest.raises(ConfigError, match="rtn_layer: 12 is past the last layer of xlmr"):
        build_suite({"workloads": [dict(entry, backbone="xlmr", params={"rtn_layer": 12})], "estimators": ["plain"]})


def test_the_xlmr_base_preset_has_xlmr_base_size():
    from workloads.metaxl import PRESETS, architecture, build_model
    arch = architecture(dict(TINY, vocab_size=1000), "xlmr-base")
    assert arch == PRESETS["xlmr-base"]
    # XLM-R base's parameters, counted here from its published shapes, with a 7-tag head and
    # max_len + 2 = 128 positions (XLM-R's own 514 add 386 x 768), on the meta device
    V, H, L, I, P, C = 250002, 768, 12, 3072, 128, len(TAGS)
    embeddings = V * H + P * H + 1 * H + 2 * H
    layer = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H
    with torch.device("meta"):
        model = build_model(arch, P - 2, seed=0)
    assert sum(p.numel() for p in model.parameters()) == embeddings + L * layer + H * C + C


def test_hgbench_run_on_metaxl_isolated_cells_and_the_report_says_f1(tmp_path):
    import pandas as pd
    import yaml

    from harness.cli import main
    suite = {"name": "mx", "train_steps": 3, "warmup_steps": 1, "timed_steps": 1, "curve_points": 1,
             "fidelity": {"checkpoints": 1, "reference_T": 2, "draws": 1},
             "workloads": [{"name": "metaxl", "params": TINY}],
             "estimators": ["plain", {"name": "unroll", "params": {"T": 1, "backend": "mixed"}}, "sama"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    rows = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(rows["status"]) == {"ok"} and rows["test_accuracy"].between(0, 1).all()
    assert (rows["n_hparams"] == 16 * 8 + 8 + 8 * 17 + 17).all()   # RTN 16 -> 8 -> 16 + 1
    page = (tmp_path / "run" / "report.html").read_text()
    assert "entity-level F1 on the target-language test set" in page
