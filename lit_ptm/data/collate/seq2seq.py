"""Encoder-decoder batches: T5's span corruption, BART's text infilling (and sentence permutation), MASS.

Each collator takes one-document windows (SentenceWindows with DOC-SENTENCES: ``[CLS] text [SEP]``)
and returns the encoder's input and the decoder's input and target (``encoder_decoder_batch``):
``input_ids`` [B, Ls], ``attention_mask`` [B, Ls] (only when a row is padded), ``decoder_input_ids``
[B, Lt] (the target shifted right behind ``decoder_start``, the token the objective's decoder starts
from), ``decoder_attention_mask`` [B, Lt] (only when padded), ``labels`` [B, Lt] (-100 on padding)
and ``num_tokens`` (real encoder + decoder tokens). As every collator, each is a pure function of
the windows and the random stream of each sample's (seed, epoch, index), vectorised over the batch.
"""

from __future__ import annotations

import torch

from lit_ptm.data.batch import Batch
from lit_ptm.data.collate.common import pad_windows, padding_keys, sample_noise
from lit_ptm.data.collate.spans import (
    SpanLengths, Spans, infill_spans, mask_budget, mask_random_keep, random_spans_noise, select_spans, sentinel_spans,
)
from lit_ptm.tokenizer import SpecialIds


def encoder_decoder_batch(inputs: torch.Tensor, input_lengths: torch.Tensor, targets: torch.Tensor,
                          target_lengths: torch.Tensor, decoder_start: int, pad_id: int) -> Batch:
    """The batch of an encoder-decoder: inputs [B, Ls] and targets [B, Lt], right-padded, with their
    lengths [B]. The decoder reads the target shifted right: [decoder_start, t_0, ..., t_(n-2)]."""
    real = torch.arange(targets.size(1)) < target_lengths[:, None]  # [B, Lt]
    start = torch.full_like(targets[:, :1], decoder_start)
    return {
        "input_ids": inputs, **padding_keys(input_lengths, inputs.size(1)),
        "decoder_input_ids": torch.cat([start, targets[:, :-1]], 1).masked_fill(~real, pad_id),
        **padding_keys(target_lengths, targets.size(1), "decoder_attention_mask"),
        "labels": targets.masked_fill(~real, -100),
        "num_tokens": int(input_lengths.sum() + target_lengths.sum()),
    }


class T5Collator:
    """T5's span corruption with T5's noise layout (``random_spans_noise``) over the text of each window
    (without its [CLS] and [SEP]): the input is the text with each noise span replaced by its sentinel
    (``ids.sentinels`` in order), then [EOS]; the target is ``<s1> span1 <s2> span2 ... <sk> spank [EOS]``.
    A row always ends in noise, so no sentinel closes the target (as in T5)."""

    def __init__(self, ids: SpecialIds, seed: int, noise_density: float = 0.15, mean_span_length: float = 3.0, *,
                 decoder_start: int):
        if not ids.sentinels or ids.eos is None:
            raise ValueError("T5's span corruption needs the tokenizer's sentinel and [EOS] tokens "
                             f"(it has {len(ids.sentinels)} sentinels, eos={ids.eos})")
        self.ids, self.seed, self.decoder_start = ids, seed, decoder_start
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.sentinels = torch.tensor(ids.sentinels)

    def spans(self, samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, Spans]:
        """The text rows [B, L - 1] (each window without its [CLS], its [SEP] replaced by [EOS], then
        padding), the text lengths n [B], and the noise spans over the text (never the [EOS])."""
        windows = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        lengths = torch.tensor([len(s["ids"]) - 2 for s in samples])
        text = windows[:, 1:].scatter(1, lengths[:, None], self.ids.eos)
        # Two rows of noise: the cut points of the noise spans and of the gaps between them; a row
        # reads its first max(n, 2) <= n + 1 columns, all its own.
        noise = sample_noise(samples, self.seed, 2, windows.size(1))[:, :, 1:]
        spans = random_spans_noise(lengths, self.noise_density, self.mean_span_length, noise[:, 0], noise[:, 1])
        needed = spans.span_id.amax(1)  # [B]: spans per row
        if (needed > len(self.sentinels)).any():
            b = int(needed.argmax())
            raise ValueError(f"a window of {len(samples[b]['ids'])} tokens needs {int(needed[b])} sentinels at noise density "
                             f"{self.noise_density} and mean span length {self.mean_span_length}, but the tokenizer has "
                             f"{len(self.sentinels)}: use shorter windows (data.seq_length)")
        return text, lengths, spans

    def __call__(self, samples: list[dict]) -> Batch:
        text, lengths, spans = self.spans(samples)
        inputs, input_lengths, targets, target_lengths = sentinel_spans(
            text, spans.span_id, self.sentinels, self.ids.pad, lengths + 1, eos_id=self.ids.eos)  # + 1: the [EOS]
        return encoder_decoder_batch(inputs, input_lengths, targets, target_lengths, self.decoder_start, self.ids.pad)


def permute_sentences(sentence: torch.Tensor, fixed: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """BART's sentence permutation: where each position of the permuted rows reads from.

    sentence [B, L] long: the sentence of each token, numbered along the row (padding: L, so it stays
    last); fixed [B, L] bool: tokens whose sentence keeps its place ([CLS], [SEP]); scores [B, L]
    uniform: a sentence's random key is its first token's. The movable sentences of a row are put in
    random order into the places movable sentences held. Returns [B, L] long: ``x.gather(1, order)``.
    """
    B, L = sentence.shape
    arange = torch.arange(L)
    # Per sentence u (one spare for padding, u = L): its first token, [B, L + 1].
    first = torch.full((B, L + 1), L, dtype=torch.long).scatter_reduce_(1, sentence, arange.expand(B, L), "amin")
    at_first = first.clamp(max=L - 1)
    movable = (first < L) & ~fixed.gather(1, at_first) & (torch.arange(L + 1) < L)  # [B, L + 1]
    by_score = torch.where(movable, scores.gather(1, at_first), 2.0).argsort(1)  # movable sentences in random order first
    units = torch.arange(L + 1).expand(B, L + 1)
    by_place = torch.where(movable, units, units + L + 1).argsort(1)  # the places they held, in row order first
    # The r-th sentence in random order goes to the r-th place; fixed ones (and absent ones) stay.
    count = movable.sum(1, keepdim=True)
    rank = torch.arange(L + 1)
    destination = units.clone().scatter_(1, by_score, torch.where(rank < count, by_place, by_score))
    # Tokens in order of their sentence's destination, and in their own order within it.
    return (destination.gather(1, sentence) * L + arange).argsort(1)


class BARTCollator:
    """BART's text infilling: spans of whole words with lengths ~ Poisson(``poisson_mean``) truncated to
    0..``max_span_words``, until round(``mask_probability`` * n) of the n text tokens are selected; each
    span becomes one [MASK], and an empty span inserts one. With ``permute_sentences`` the window's
    sentences are first shuffled ([CLS] and [SEP] keep their places). The decoder reconstructs the
    whole original window, ``[CLS] text [SEP]``."""

    def __init__(self, ids: SpecialIds, seed: int, mask_probability: float = 0.3, poisson_mean: float = 3.0,
                 max_span_words: int = 16, permute_sentences: bool = False, *, decoder_start: int):
        if ids.mask is None:
            raise ValueError("BART's text infilling needs the tokenizer's [MASK] token")
        self.ids, self.seed, self.decoder_start = ids, seed, decoder_start
        self.mask_probability, self.permute_sentences = mask_probability, permute_sentences
        self.lengths = SpanLengths("poisson", max_n=max_span_words, min_n=0, mean=poisson_mean)
        self.is_special = ids.special_table()

    def spans(self, samples: list[dict]) -> tuple[torch.Tensor, Spans]:
        """The rows the noise applies to [B, L] (sentences permuted when asked) and their spans."""
        ids = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        word_start = pad_windows(samples, "word_start", True)
        # Rows: span order scores, span lengths, sentence order scores.
        noise = sample_noise(samples, self.seed, 3, ids.size(1))
        if self.permute_sentences:
            sentence = pad_windows(samples, "sentence", ids.size(1))
            # The frame ([CLS], each [SEP]) stays: a special token that is a sentence unit of its own (a
            # sentence that merely starts with [UNK] moves like any other).
            size = torch.zeros_like(sentence).scatter_add_(1, sentence.clamp(max=ids.size(1) - 1), torch.ones_like(sentence))
            frame = self.is_special[ids] & (size.gather(1, sentence.clamp(max=ids.size(1) - 1)) == 1)
            order = permute_sentences(sentence, frame, noise[:, 2])
            ids, word_start, sentence = ids.gather(1, order), word_start.gather(1, order), sentence.gather(1, order)
            # A piece of a long sentence may begin inside a word; moved, it begins one.
            word_start |= sentence != torch.nn.functional.pad(sentence[:, :-1], (1, 0), value=-1)
        candidate = ~self.is_special[ids]  # not special, not padding
        spans = select_spans(candidate, mask_budget(candidate, self.mask_probability), noise[:, 0], noise[:, 1],
                             self.lengths, word_start)
        return ids, spans

    def __call__(self, samples: list[dict]) -> Batch:
        original = pad_windows(samples, "ids", self.ids.pad)  # [B, L]: the target
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        ids, spans = self.spans(samples)
        inputs, input_lengths = infill_spans(ids, spans.span_id, self.ids.mask, self.ids.pad, lengths, spans.inserted)
        return encoder_decoder_batch(inputs, input_lengths, original, lengths, self.decoder_start, self.ids.pad)


class MASSCollator:
    """MASS: one contiguous fragment of k = max(1, round(``fragment_ratio`` * n)) of a window's n text
    tokens, starting at the text's start with probability 0.2, at its end (n - k) with 0.2, else
    anywhere in [0, n - k]. The encoder reads the window with the fragment corrupted per token
    (``mask_ratio`` [MASK], ``random_ratio`` random token, else kept); the decoder reads the fragment
    shifted right, at the fragment's own positions in the window, and predicts it:
    ``decoder_input_ids`` [decoder_start, x_s .. x_(s+k-2)], ``decoder_position_ids`` s+1 .. s+k
    (the [CLS] at 0; padding 0), ``labels`` x_s .. x_(s+k-1)."""

    def __init__(self, ids: SpecialIds, seed: int, fragment_ratio: float = 0.5, *, decoder_start: int,
                 mask_ratio: float = 0.8, random_ratio: float = 0.1):
        if ids.mask is None:
            raise ValueError("MASS needs the tokenizer's [MASK] token")
        self.ids, self.seed, self.decoder_start = ids, seed, decoder_start
        self.fragment_ratio, self.mask_ratio, self.random_ratio = fragment_ratio, mask_ratio, random_ratio
        self.regular_ids = ids.regular_ids()

    def fragments(self, samples: list[dict], noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's fragment in text coordinates: start s [B] and length k [B]. noise [B, L]: column 0
        picks start / end / anywhere, column 1 the place anywhere (every window has >= 2 tokens)."""
        n = torch.tensor([len(s["ids"]) - 2 for s in samples])
        k = torch.minimum((n.float() * self.fragment_ratio).round().long().clamp(min=1), n)
        room = n - k  # [B]: the last possible start
        anywhere = (noise[:, 1] * (room + 1)).long().clamp(max=room)
        start = torch.where(noise[:, 0] < 0.2, 0, torch.where(noise[:, 0] < 0.4, room, anywhere))
        return start, k

    def __call__(self, samples: list[dict]) -> Batch:
        ids = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        # Rows: the fragment's place (columns 0, 1), 80/10/10 draws, random tokens.
        noise = sample_noise(samples, self.seed, 3, ids.size(1))
        start, k = self.fragments(samples, noise[:, 0])
        arange = torch.arange(ids.size(1))
        fragment = (arange > start[:, None]) & (arange <= (start + k)[:, None])  # [B, L]: window positions s+1 .. s+k
        inputs, _ = mask_random_keep(ids, fragment.long(), noise[:, 1], noise[:, 2], self.regular_ids, self.ids.mask,
                                     self.mask_ratio, self.random_ratio)
        positions = start[:, None] + 1 + torch.arange(int(k.max()))  # [B, Lt]
        real = positions <= (start + k)[:, None]
        targets = ids.gather(1, positions.clamp(max=ids.size(1) - 1)).masked_fill(~real, self.ids.pad)
        batch = encoder_decoder_batch(inputs, lengths, targets, k, self.decoder_start, self.ids.pad)
        batch["decoder_position_ids"] = positions.masked_fill(~real, 0)
        return batch
