"""Fine-tuning inputs as pure functions of (tokenizer, records): layouts, label alignment, QA windows.

Layouts follow the backbone: an encoder reads ``[CLS] A [SEP] (B [SEP])`` and pools [CLS]; a causal
model reads ``A [SEP] B [EOS]`` and pools the last token (GPT's "extract" token), the only one that
has seen the whole input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_ptm.errors import ConfigError
from lit_ptm.tokenizer import Tokenizer

IGNORE = -100


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation (as GLUE fine-tuning does): trim the longer side until the pair fits."""
    while len_a + len_b > budget:
        if len_a >= len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def encode_texts(tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, causal: bool) -> list[dict]:
    """Sentence (pair) classification inputs: ``ids``, ``token_type`` (0 for A, 1 for B) per example."""
    ids = tokenizer.ids
    a_ids = [a for a, _ in tokenizer.encode_batch(texts)]
    b_ids = [b for b, _ in tokenizer.encode_batch(pairs)] if pairs is not None else [None] * len(texts)
    out = []
    for a, b in zip(a_ids, b_ids):
        specials = (1 if causal else 2) + (1 if b is not None else 0)
        keep_a, keep_b = truncate_pair(len(a), len(b) if b is not None else 0, max_length - specials)
        a = a[:keep_a]
        if causal:  # A [SEP] B [EOS]: the final [EOS] is pooled (GPT-2 has no [SEP]: its end-of-text token separates)
            first = a + ([ids.sep if ids.sep is not None else ids.eos] if b is not None else [])
            rest = (b[:keep_b] if b is not None else []) + [ids.eos]
        else:  # [CLS] A [SEP] B [SEP]
            first = [ids.cls] + a + [ids.sep]
            rest = b[:keep_b] + [ids.sep] if b is not None else []
        out.append({"ids": first + rest, "token_type": [0] * len(first) + [1] * len(rest)})
    return out


def align_word_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Word-level labels onto sub-word tokens: the first token of each word carries its word's label,
    the others (and special tokens, ``None``) get IGNORE, so each word is scored exactly once."""
    labels, previous = [], None
    for w in word_ids:
        labels.append(IGNORE if w is None or w == previous else word_labels[w])
        previous = w
    return labels


def word_predictions(word_ids: list[int | None], token_predictions: list[int], num_words: int) -> list[int]:
    """The inverse of ``align_word_labels``: each word's prediction is its first token's.
    Words cut off by truncation get -1."""
    out, previous = [-1] * num_words, None
    for w, p in zip(word_ids, token_predictions):
        if w is not None and w != previous:
            out[w] = p
        previous = w
    return out


def encode_words(tokenizer: Tokenizer, words: list[str], max_length: int, causal: bool) -> tuple[list[int], list[int | None]]:
    """A pre-split sentence (NER-style) as token ids and the word index of each token (None for specials)."""
    encoding = tokenizer.hf.encode(words, is_pretokenized=True, add_special_tokens=False)
    ids, word_ids = list(encoding.ids), list(encoding.word_ids)
    budget = max_length - (1 if causal else 2)
    ids, word_ids = ids[:budget], word_ids[:budget]
    t = tokenizer.ids
    if causal:
        return ids + [t.eos], word_ids + [None]
    return [t.cls] + ids + [t.sep], [None] + word_ids + [None]


@dataclass
class QAWindow:
    """One window of a (question, context) pair: ``[CLS] question [SEP] context-piece [SEP]``."""

    example: int  # index of the example it comes from
    ids: list[int]
    token_type: list[int]
    offsets: list[tuple[int, int] | None]  # character span in the context of each token; None outside it
    start: int  # token position of the answer's start in this window (0, the [CLS], when not inside)
    end: int


def qa_windows(
    tokenizer: Tokenizer, question: str, context: str, max_length: int, stride: int, example: int = 0,
    answer: tuple[int, int] | None = None, max_question_tokens: int = 64,
) -> list[QAWindow]:
    """Slide over a long context in windows that overlap by ``stride`` tokens (SQuAD's doc_stride idea:
    each answer lies whole inside at least one window). ``answer`` is the character span [start, end)
    in the context; a window that does not hold it whole points at [CLS] (no answer here)."""
    t = tokenizer.ids
    q_ids = tokenizer.hf.encode(question, add_special_tokens=False).ids[:max_question_tokens]
    encoding = tokenizer.hf.encode(context, add_special_tokens=False)
    c_ids, c_offsets = encoding.ids, encoding.offsets
    room = max_length - len(q_ids) - 3
    if room <= 0:
        raise ConfigError(f"data.max_length={max_length} leaves no room for the context after a {len(q_ids)}-token question")
    if stride >= room:
        raise ConfigError(f"data.stride={stride} must be smaller than the context room of a window ({room} tokens)")
    windows, begin = [], 0
    while True:
        piece = range(begin, min(begin + room, len(c_ids)))
        ids = [t.cls] + q_ids + [t.sep] + [c_ids[i] for i in piece] + [t.sep]
        offsets = [None] * (len(q_ids) + 2) + [tuple(c_offsets[i]) for i in piece] + [None]
        start = end = 0
        if answer is not None:
            first = len(q_ids) + 2
            inside = [first + k for k, i in enumerate(piece) if c_offsets[i][0] < answer[1] and c_offsets[i][1] > answer[0]]
            if inside and c_offsets[piece[0]][0] <= answer[0] and c_offsets[piece[-1]][1] >= answer[1]:
                start, end = inside[0], inside[-1]
        windows.append(QAWindow(example, ids, [0] * (len(q_ids) + 2) + [1] * (len(piece) + 1), offsets, start, end))
        if piece.stop >= len(c_ids):
            return windows
        begin = piece.stop - stride


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: list, max_answer_tokens: int) -> tuple[float, int, int]:
    """The highest-scoring (start <= end, within max_answer_tokens) span of context tokens in one window:
    (score, start token, end token); score -inf when the window holds no context."""
    L = start_logits.size(0)
    in_context = torch.tensor([o is not None for o in offsets] + [False] * (L - len(offsets)))
    scores = start_logits[:, None] + end_logits[None, :]
    i = torch.arange(L)
    valid = in_context[:, None] & in_context[None, :] & (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_tokens)
    scores = scores.masked_fill(~valid, float("-inf"))
    flat = int(scores.argmax())
    return float(scores.flatten()[flat]), flat // L, flat % L
