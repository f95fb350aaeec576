"""Tokenizers: train WordPiece / byte-level BPE / Unigram with `tokenizers`, or load a tokenizer.json.

The special-token contract: every tokenizer lit_ptm uses holds the tokens of ``SPECIAL_TOKENS``.
A trained tokenizer has them at ids 0..len-1 in this order; a loaded one that lacks some gets them
appended (with a warning). Objectives reserve the ones they need now, so that a store built today
serves every objective later (GLM's [sop]/[eop]/[sMASK]/[gMASK], T5's sentinels, ...).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
from lit_ptm.errors import LitPtmError
from lit_ptm.rundir import atomic_write

PAD, UNK, CLS, SEP, MASK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"
NUM_SENTINELS = 100
SENTINELS: tuple[str, ...] = tuple(f"[X{i}]" for i in range(NUM_SENTINELS))  # T5's span-corruption sentinels, in order
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, UNK, CLS, SEP, MASK, BOS, EOS,
    "[SOP]", "[EOP]", "[sMASK]", "[gMASK]",  # GLM blank infilling
    *SENTINELS,
)
TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")


class TokenizerError(LitPtmError, ValueError):
    pass


# The roles special tokens play, and lit_ptm's own names for them. A tokenizer from elsewhere (an HF
# model directory) names its own (RoBERTa's <s> </s> <pad> <mask>, GPT-2's single <|endoftext|>) in
# special_tokens_map.json / tokenizer_config.json beside its tokenizer.json; they are mapped by role.
ROLES = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK, "bos": BOS, "eos": EOS,
         "sop": "[SOP]", "eop": "[EOP]", "smask": "[sMASK]", "gmask": "[gMASK]"}  # the last four: GLM's
ROLE_FILES = ("special_tokens_map.json", "tokenizer_config.json")
HF_SENTINEL = "<extra_id_{}>"  # HF T5's names for its sentinels (numbered from 0)


@dataclass(frozen=True)
class SpecialIds:
    """The ids collators need; plain ints so that the object pickles into DataLoader workers.
    A role the tokenizer does not have is None (``Tokenizer.require`` names it); ``pad`` always has
    an id: without a padding token, padding uses the end-of-text token (it is masked everywhere).
    ``sentinels``: T5's span-corruption sentinels in order (span k of a row becomes ``sentinels[k - 1]``);
    () when the tokenizer has none."""

    vocab_size: int
    pad: int
    unk: int | None
    cls: int | None
    sep: int | None
    mask: int | None
    bos: int | None
    eos: int | None
    special: tuple[int, ...] = field(repr=False)
    sentinels: tuple[int, ...] = field(default=(), repr=False)
    # GLM's blank infilling: a blank's start / end, the [MASK]s of a sentence blank and of a suffix blank
    sop: int | None = None
    eop: int | None = None
    smask: int | None = None
    gmask: int | None = None

    def special_table(self) -> torch.Tensor:
        """Lookup table [vocab_size], True at special ids: ``table[ids]`` beats ``torch.isin`` by far."""
        table = torch.zeros(self.vocab_size, dtype=torch.bool)
        table[list(self.special)] = True
        return table

    def regular_ids(self) -> torch.Tensor:
        """Ids a collator may draw as random replacement tokens (everything but specials)."""
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[list(self.special)] = False
        return keep.nonzero().squeeze(1)


# The special tokens HF's slow tokenizer classes assume when their files do not name them (older
# released checkpoints, e.g. bert-base-uncased, list none in tokenizer_config.json).
CLASS_DEFAULTS = {
    "Bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "Roberta": {"bos": "<s>", "eos": "</s>", "sep": "</s>", "cls": "<s>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>"},
    "Albert": {"bos": "[CLS]", "eos": "[SEP]", "unk": "<unk>", "sep": "[SEP]", "pad": "<pad>", "cls": "[CLS]", "mask": "[MASK]"},
    "GPT2": {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"},
    "T5": {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"},  # sentinels: its <extra_id_N> tokens (SpecialIds.sentinels)
    "Bart": {"bos": "<s>", "eos": "</s>", "sep": "</s>", "cls": "<s>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>"},
    "XLNet": {"bos": "<s>", "eos": "</s>", "sep": "<sep>", "cls": "<cls>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>"},
    "MPNet": {"bos": "<s>", "eos": "</s>", "sep": "</s>", "cls": "<s>", "unk": "[UNK]", "pad": "<pad>", "mask": "<mask>"},
}


def read_roles(directory: Path) -> dict[str, str] | None:
    """Role -> token of an HF tokenizer directory, or None when it has no role files: special_tokens_map.json
    first, then tokenizer_config.json, then the defaults of its tokenizer_class."""
    found, tokenizer_class = [], ""
    for name in ROLE_FILES:
        path = directory / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{path} is not valid JSON: {e}") from None
            found.append(data)
            tokenizer_class = tokenizer_class or str(data.get("tokenizer_class") or "")
    if not found:  # an HF model directory's tokenizer.json alone: the defaults of its model_type
        model_type = json.loads((directory / "config.json").read_text()).get("model_type") if (directory / "config.json").is_file() else None
        family = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "gpt2": "GPT2", "t5": "T5", "bart": "Bart", "xlnet": "XLNet",
                  "mpnet": "MPNet"}.get(model_type)
        return dict(CLASS_DEFAULTS[family]) if family else None
    roles = {}
    for data in found:
        for role in ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):  # an AddedToken, serialised
                value = value.get("content")
            if isinstance(value, str) and role not in roles:
                roles[role] = value
    family = next((f for f in CLASS_DEFAULTS if tokenizer_class.startswith(f + "Tokenizer")), None)
    for role, token in CLASS_DEFAULTS.get(family, {}).items():
        roles.setdefault(role, token)
    return roles


class Tokenizer:
    """A `tokenizers.Tokenizer` with the ids of its special tokens' roles, reporting word starts.

    ``roles`` None: lit_ptm's contract, every token of ``SPECIAL_TOKENS`` (appended, with a warning,
    to a tokenizer that lacks some). ``roles`` given (role -> token, from an HF tokenizer directory):
    those tokens play those roles, and nothing is appended, so ids keep matching the embeddings of
    the model the tokenizer came with.
    """

    def __init__(self, hf: HFTokenizer, source: str = "<memory>", roles: dict[str, str] | None = None):
        self.hf = hf
        self.source = source
        self.roles = roles
        if roles is None:
            missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
            if missing:
                shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
                warnings.warn(f"tokenizer {source} lacks {len(missing)} lit_ptm special tokens ({shown}); appending them")
                hf.add_special_tokens(missing)
            named = dict(ROLES)
        else:
            absent = [f"{role}={token!r}" for role, token in roles.items() if hf.token_to_id(token) is None]
            if absent:
                raise TokenizerError(f"tokenizer {source} names special tokens that are not in its vocabulary: {', '.join(absent)}")
            named = roles
        # Never let the tokenizer add [CLS]/[SEP] itself: window builders place special tokens.
        hf.no_padding()
        hf.no_truncation()
        ids = {role: hf.token_to_id(token) for role, token in named.items()}
        reserved = [hf.token_to_id(t) for t in SPECIAL_TOKENS] if roles is None else []
        special = {i for i in [*ids.values(), *reserved] if i is not None}
        special |= {i for i, tok in hf.get_added_tokens_decoder().items() if tok.special}
        pad = next(i for i in (ids.get("pad"), ids.get("eos"), ids.get("unk"), 0) if i is not None)
        self.ids = SpecialIds(
            vocab_size=hf.get_vocab_size(with_added_tokens=True), pad=pad,
            **{role: ids.get(role) for role in ROLES if role != "pad"}, special=tuple(sorted(special)),
            sentinels=_sentinel_ids(hf, roles is None),
        )
        identity = hf.to_str() + ("" if roles is None else json.dumps(roles, sort_keys=True))
        self.sha = hashlib.sha256(identity.encode()).hexdigest()[:16]

    def require(self, *roles: str, purpose: str) -> None:
        """Stop with a clear error when the tokenizer has no token for a role that ``purpose`` needs."""
        missing = [r for r in roles if getattr(self.ids, r) is None or getattr(self.ids, r) == ()]  # (): no sentinels
        if missing:
            raise TokenizerError(
                f"tokenizer {self.source} has no {' / '.join(missing)} token, which {purpose} needs "
                f"(its special tokens: {self.roles})"
            )

    @property
    def vocab_size(self) -> int:
        return self.ids.vocab_size

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"tokenizer file {path} is not a valid tokenizer.json: {e}") from e
        return cls(hf, source=str(path), roles=read_roles(path.parent))

    def save(self, path: str | Path) -> None:
        """tokenizer.json, and beside it the role map of a tokenizer that has one (special_tokens_map.json)."""
        with atomic_write(path) as tmp:
            self.hf.save(str(tmp))
        if self.roles is not None:
            with atomic_write(Path(path).parent / ROLE_FILES[0]) as tmp:
                tmp.write_text(json.dumps({f"{role}_token": token for role, token in self.roles.items()}, indent=1))

    def encode_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode ``texts`` (no special tokens added) into flat arrays: token ids [T], word-start
        flags [T] and the number of tokens of each text [len(texts)].

        Word starts come from the tokenizer's word ids (its pre-tokenizer's words), so whole-word
        masking works for WordPiece, byte-level BPE and Unigram alike. The Rust tokenizer encodes the
        batch on all cores; the flattening runs in numpy, not in a Python loop per token.
        """
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        total = int(lengths.sum())
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
        words = np.fromiter(
            (-1 if w is None else w for w in chain.from_iterable(e.word_ids for e in encodings)), dtype=np.int64, count=total
        )
        starts = np.ones(total, dtype=bool)
        starts[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
        starts[np.cumsum(lengths)[:-1][lengths[1:] > 0]] = True  # each text starts a word
        return ids, starts, lengths

    def encode_batch(self, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
        """Token ids and word-start flags of each text, as lists."""
        ids, starts, lengths = self.encode_arrays(texts)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [(ids[a:b].tolist(), starts[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)


def _sentinel_ids(hf: HFTokenizer, own: bool) -> tuple[int, ...]:
    """The sentinels' ids in order: lit_ptm's "[X0]".."[X99]" (``own``: the contract holds them), else
    HF T5's "<extra_id_0>", "<extra_id_1>", ... up to the first number the vocabulary lacks."""
    if own:
        return tuple(hf.token_to_id(t) for t in SENTINELS)
    found = []
    while (i := hf.token_to_id(HF_SENTINEL.format(len(found)))) is not None:
        found.append(i)
    return tuple(found)


def train_tokenizer(
    sentences: Iterable[str], kind: str = "wordpiece", vocab_size: int = 30522, lowercase: bool = True,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` (wordpiece | bpe | unigram) on an iterator of sentences."""
    specials = list(SPECIAL_TOKENS)
    if vocab_size <= len(specials) + 100:
        raise TokenizerError(f"data.vocab_size={vocab_size} is too small: {len(specials)} ids are special tokens")
    norm = [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()] if lowercase else [normalizers.NFC()]
    if kind == "wordpiece":  # BERT
        tok = HFTokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=min_frequency)
    elif kind == "bpe":  # GPT-2 / RoBERTa: byte-level, never an unknown token
        tok = HFTokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "unigram":  # T5 / ALBERT (SentencePiece-style)
        tok = HFTokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=UNK)
    else:
        raise TokenizerError(f"data.tokenizer_kind={kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
    tok.train_from_iterator(sentences, trainer=trainer)
    # Its serialised form: the identity (sha) of a trained tokenizer is the one it has once saved and loaded
    # (a freshly trained Unigram model serialises its scores differently from a loaded one).
    return Tokenizer(HFTokenizer.from_str(tok.to_str()), source=f"<trained {kind} {vocab_size}>")
