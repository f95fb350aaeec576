"""Tokenizers: train WordPiece / byte-level BPE / Unigram with `tokenizers`, or load a tokenizer.json.

The special-token contract: every tokenizer lit_ptm uses holds the tokens of ``SPECIAL_TOKENS``.
A trained tokenizer has them at ids 0..len-1 in this order; a loaded one that lacks some gets them
appended (with a warning). Objectives reserve the ones they need now, so that a store built today
serves every objective later (GLM's [sop]/[eop]/[sMASK]/[gMASK], T5's sentinels, ...).
"""

from __future__ import annotations

import hashlib
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
NUM_SENTINELS = 100  # T5's span-corruption sentinels
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, UNK, CLS, SEP, MASK, BOS, EOS,
    "[SOP]", "[EOP]", "[sMASK]", "[gMASK]",  # GLM blank infilling
    *(f"[X{i}]" for i in range(NUM_SENTINELS)),  # T5 sentinels
)
TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")


class TokenizerError(LitPtmError, ValueError):
    pass


@dataclass(frozen=True)
class SpecialIds:
    """The ids collators need; plain ints so that the object pickles into DataLoader workers."""

    vocab_size: int
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    bos: int
    eos: int
    special: tuple[int, ...] = field(repr=False)

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


class Tokenizer:
    """A `tokenizers.Tokenizer` that honours the special-token contract and reports word starts."""

    def __init__(self, hf: HFTokenizer, source: str = "<memory>"):
        self.hf = hf
        self.source = source
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            warnings.warn(f"tokenizer {source} lacks {len(missing)} lit_ptm special tokens ({shown}); appending them")
            hf.add_special_tokens(missing)
        # Never let the tokenizer add [CLS]/[SEP] itself: window builders place special tokens.
        hf.no_padding()
        hf.no_truncation()
        ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        special = set(ids.values()) | {i for i, tok in hf.get_added_tokens_decoder().items() if tok.special}
        self.ids = SpecialIds(
            vocab_size=hf.get_vocab_size(with_added_tokens=True),
            pad=ids[PAD], unk=ids[UNK], cls=ids[CLS], sep=ids[SEP], mask=ids[MASK], bos=ids[BOS], eos=ids[EOS],
            special=tuple(sorted(special)),
        )
        self.sha = hashlib.sha256(hf.to_str().encode()).hexdigest()[:16]

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
        return cls(hf, source=str(path))

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as tmp:
            self.hf.save(str(tmp))

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
    return Tokenizer(tok, source=f"<trained {kind} {vocab_size}>")
