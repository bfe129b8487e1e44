"""Data for the MetaXL workload: a seeded synthetic cross-lingual NER task (the embedded
default), WikiAnn/PAN-X files as MetaXL reads them (from a path), and entity-level F1.

Every split becomes `TokenSplit`: token ids, attention mask and labels of shape
(sentences, max_len), labels -100 where no tag is scored (padding, later sub-tokens), as
token-classification models expect.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from harness.core.errors import ConfigError

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
TAG_ID = {t: i for i, t in enumerate(TAGS)}
TYPES = ("PER", "ORG", "LOC")
IGNORE = -100
# XLM-R's special ids: <s> 0, <pad> 1, </s> 2, <unk> 3.
BOS, PAD, EOS, UNK = 0, 1, 2, 3


@dataclass(frozen=True)
class TokenSplit:
    ids: Tensor      # (n, max_len) long
    mask: Tensor     # (n, max_len) long, 1 on real tokens
    labels: Tensor   # (n, max_len) long, IGNORE where unscored

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "TokenSplit":
        return TokenSplit(self.ids.to(device), self.mask.to(device), self.labels.to(device))

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = idx.to(self.ids.device)
        return self.ids[idx], self.mask[idx], self.labels[idx]

    def take(self, n: int) -> "TokenSplit":
        return TokenSplit(self.ids[:n], self.mask[:n], self.labels[:n])


def encode(sentences: Sequence[tuple[Sequence[Sequence[int]], Sequence[str]]], max_len: int) -> TokenSplit:
    """Sentences of (sub-token ids per word, tag per word) -> a padded TokenSplit:
    <s> words </s>, the first sub-token of each word labelled, truncated at max_len."""
    n = len(sentences)
    ids = torch.full((n, max_len), PAD, dtype=torch.long)
    labels = torch.full((n, max_len), IGNORE, dtype=torch.long)
    for i, (words, tags) in enumerate(sentences):
        row, lab = [BOS], [IGNORE]
        for pieces, tag in zip(words, tags):
            pieces = list(pieces) or [UNK]
            row += pieces
            lab += [TAG_ID[tag]] + [IGNORE] * (len(pieces) - 1)
        row, lab = row[:max_len - 1] + [EOS], lab[:max_len - 1] + [IGNORE]
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, :len(lab)] = torch.tensor(lab)
    return TokenSplit(ids, (ids != PAD).long(), labels)

# ------------------------------------------------------------------ the synthetic task


@dataclass(frozen=True)
class Lexicon:
    """One language's words, as token ids: fillers, entity-type cue words, entity words
    per type, and (target only) a case suffix per type."""
    filler: np.ndarray
    cues: dict[str, np.ndarray]
    names: dict[str, np.ndarray]
    suffix: dict[str, int] | None


SYNTH = {"fillers": 150, "cues": 4, "names": 30, "shared_names": 0.5}


def synthetic_vocab_needed() -> int:
    per_lang = SYNTH["fillers"] + len(TYPES) * (SYNTH["cues"] + SYNTH["names"])
    return 4 + 2 * per_lang + len(TYPES)


def _lexicons(rng: np.random.Generator) -> tuple[Lexicon, Lexicon]:
    """Disjoint vocabularies for source and target, except that a share of the names is
    spelt alike in both (names travel across languages; nothing else does)."""
    next_id = iter(range(4, 10 ** 9))
    take = lambda k: np.array([next(next_id) for _ in range(k)])
    src = Lexicon(take(SYNTH["fillers"]), {t: take(SYNTH["cues"]) for t in TYPES},
                  {t: take(SYNTH["names"]) for t in TYPES}, None)
    names = {}
    for t in TYPES:
        own = take(SYNTH["names"])
        shared = rng.random(SYNTH["names"]) < SYNTH["shared_names"]
        names[t] = np.where(shared, src.names[t], own)
    tgt = Lexicon(take(SYNTH["fillers"]), {t: take(SYNTH["cues"]) for t in TYPES}, names,
                  {t: int(take(1)[0]) for t in TYPES})
    return src, tgt


def _sentence(rng: np.random.Generator, lex: Lexicon, target: bool) -> tuple[list[list[int]], list[str]]:
    """4-12 filler words with 1-3 entities of 1-3 words. An entity's type is predictable
    only from its cue word (names are drawn from all types' lists with 30% confusion): the
    source puts the cue BEFORE the entity, the target AFTER it and ends the entity with a
    type-specific case suffix word (tagged I-), a different word order and morphology."""
    words: list[list[int]] = [[int(w)] for w in rng.choice(lex.filler, rng.integers(4, 13))]
    tags = ["O"] * len(words)
    for _ in range(rng.integers(1, 4)):
        t = TYPES[rng.integers(len(TYPES))]
        pool = lex.names[TYPES[rng.integers(len(TYPES))]] if rng.random() < 0.3 else lex.names[t]
        span = [[int(w)] for w in rng.choice(pool, rng.integers(1, 4))]
        span_tags = [f"B-{t}"] + [f"I-{t}"] * (len(span) - 1)
        if target:
            span, span_tags = span + [[lex.suffix[t]]], span_tags + [f"I-{t}"]
        cue = [[int(rng.choice(lex.cues[t]))]] if rng.random() < 0.9 else []
        block, block_tags = (span + cue, span_tags + ["O"] * len(cue)) if target else \
            (cue + span, ["O"] * len(cue) + span_tags)
        at = int(rng.integers(0, len(words) + 1))
        if at < len(words) and tags[at].startswith("I-"):   # never split an entity
            at = len(words)
        words[at:at] = block
        tags[at:at] = block_tags
    return words, tags


def synthetic_splits(seed: int, sizes: dict[str, int], max_len: int) -> dict[str, TokenSplit]:
    """`source_train`, `target_train`, `target_meta` (for the outer loss; MetaXL meta-learns
    on the target's few training sentences), `target_dev`, `target_test`. The lexicons are a
    fixed function of the seed; each split draws its own sentences."""
    rng = np.random.default_rng(seed)
    src, tgt = _lexicons(rng)
    out = {}
    for split, n in sizes.items():
        target = split.startswith("target")
        lex = tgt if target else src
        out[split] = encode([_sentence(rng, lex, target) for _ in range(n)], max_len)
    return out

# ------------------------------------------------------------------ WikiAnn / PAN-X files


def read_panx(path: Path) -> list[tuple[list[str], list[str]]]:
    """MetaXL's format: one `lang:token<TAB>tag` per line, a blank line between sentences.
    A malformed line raises ConfigError naming the file and line."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (metaxl data_root must hold <lang>/train, dev and test "
                          f"in WikiAnn's `lang:token<TAB>tag` format)")
    sentences, words, tags = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        token, tab, tag = line.rstrip("\r").rpartition("\t")
        lang, colon, word = token.partition(":")
        if not tab or not colon or not word or tag not in TAG_ID:
            raise ConfigError(f"{path}:{number}: expected `lang:token<TAB>tag` with tag in "
                              f"{', '.join(TAGS)}; got {line[:80]!r}")
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise ConfigError(f"{path}: no sentences")
    return sentences


def load_tokenizer(path: str):
    """A `tokenizers` tokenizer from a local tokenizer.json (no download)."""
    from tokenizers import Tokenizer
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"metaxl tokenizer {path}: no such file (give a local tokenizer.json)")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # the library's own parse errors, whatever their class
        raise ConfigError(f"metaxl tokenizer {path}: not a tokenizers JSON file ({str(e).splitlines()[0][:120]})") from None


SPECIALS = 4


def tokenize(sentences: Iterable[tuple[list[str], list[str]]], tokenizer,
             max_len: int) -> TokenSplit:
    """Words -> sub-token ids, each shifted by the 4 XLM-R specials (<s> <pad> </s> <unk>) so
    that no word's id collides with padding whatever the tokenizer's own numbering: the
    model's vocabulary must hold the tokenizer's size + 4."""
    encoded = [([[SPECIALS + i for i in tokenizer.encode(w, add_special_tokens=False).ids] for w in words], tags)
               for words, tags in sentences]
    return encode(encoded, max_len)


def panx_splits(data_root: str, source: str, target: str, tokenizer_path: str, max_len: int,
                sizes: dict[str, int]) -> dict[str, TokenSplit]:
    """The five splits from `data_root/<lang>/{train,dev,test}`: the source's train; the
    target's train (its first `target_train` sentences, also the meta set, as MetaXL does),
    dev and test."""
    tok = load_tokenizer(tokenizer_path)
    read = lambda lang, split: tokenize(read_panx(Path(data_root) / lang / split), tok, max_len)
    tgt_train = read(target, "train")
    return {"source_train": read(source, "train").take(sizes["source_train"]),
            "target_train": tgt_train.take(sizes["target_train"]),
            "target_meta": tgt_train.take(sizes["target_train"]),
            "target_dev": read(target, "dev").take(sizes["target_dev"]),
            "target_test": read(target, "test").take(sizes["target_test"])}


def check_panx(data_root: str, source: str, target: str, tokenizer_path: str) -> None:
    """At suite load: every file there and well formed, the tokenizer readable."""
    load_tokenizer(tokenizer_path)
    for lang, split in [(source, "train"), (target, "train"), (target, "dev"), (target, "test")]:
        read_panx(Path(data_root) / lang / split)


def tokenizer_vocab(tokenizer_path: str) -> int:
    """The vocabulary the model needs for this tokenizer: its own + the 4 specials."""
    return load_tokenizer(tokenizer_path).get_vocab_size() + SPECIALS

# ------------------------------------------------------------------ entity-level F1


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Chunks (type, start, end exclusive) of a BIO tag sequence, as conlleval and seqeval's
    default mode read them: an I- whose type differs from the open chunk's, or that follows
    O, starts a new chunk."""
    chunks, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        ends = prefix in ("O", "B") or (prefix == "I" and t != kind)
        if start is not None and ends:
            chunks.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, t
    return chunks


def entity_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Micro F1 over entities, exact span and type (0 when neither side has one)."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        eg, ep = entities(g), entities(p)
        tp, n_gold, n_pred = tp + len(eg & ep), n_gold + len(eg), n_pred + len(ep)
    if tp == 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)


def tag_sequences(labels: Tensor, predicted: Tensor) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags at the scored positions (labels != IGNORE), per sentence."""
    gold, pred = [], []
    for lab, hat in zip(labels.tolist(), predicted.tolist()):
        keep = [i for i, v in enumerate(lab) if v != IGNORE]
        gold.append([TAGS[lab[i]] for i in keep])
        pred.append([TAGS[hat[i]] for i in keep])
    return gold, pred
