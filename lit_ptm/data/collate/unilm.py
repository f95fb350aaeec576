"""UniLM (Dong et al., 2019): one cloze task under four self-attention patterns, one pattern a batch.

Every batch is a batch of sentence pairs ``[CLS] A [SEP] B [SEP]`` (the NSP packing) with 15% of the
tokens selected (80% of the selections single tokens, 10% bigrams, 10% trigrams) and corrupted
80/10/10. What the batch's sub-task changes is only what each token may attend to (the objective's
``attention_mask``) and the segment ids:

- bidirectional: every token sees every token; segments A = 0, B = 1; plus NSP (``pair_labels``).
- l2r (left-to-right): a token sees itself and what is before it; segment 2 throughout.
- r2l (right-to-left): a token sees itself and what is after it; segment 3 throughout.
- seq2seq: ``[CLS] A [SEP]`` (the source, ``prefix_length`` long) is bidirectional and never sees the
  target; a target token sees the source, itself and the target before it; segments 4 / 5.
"""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import padding_keys, sample_seed
from lit_ptm.data.collate.pairs import PairMLMCollator
from lit_ptm.data.collate.spans import SpanLengths, mask_budget, mask_random_keep, select_spans
from lit_ptm.tokenizer import SpecialIds

TASKS = ("bidirectional", "l2r", "r2l", "seq2seq")  # the batch's ``task`` is an index into this
SEGMENTS = {"bidirectional": (0, 1), "l2r": (2, 2), "r2l": (3, 3), "seq2seq": (4, 5)}  # (A's, B's): UniLM's new_segment_ids
NGRAMS = SpanLengths("table", max_n=3, weights=(0.8, 0.1, 0.1))  # UniLM: 80% tokens, 20% bigrams or trigrams
_TASK_STREAM = 0x5EED_0F_7A5C  # keeps the task draw apart from the first sample's own stream


def batch_task(seed: int, samples: list[dict], mix: torch.Tensor) -> int:
    """The batch's sub-task (an index into TASKS), drawn with probabilities ``mix`` [4] from a generator
    seeded by (seed, epoch, the first sample's index): a resumed run redraws the same task."""
    first = samples[0]
    g = torch.Generator().manual_seed(sample_seed(seed + _TASK_STREAM, first["epoch"], first["index"]))
    u = torch.rand(1, generator=g)
    return min(int(torch.searchsorted(mix.cumsum(0), u).item()), len(TASKS) - 1)


class UniLMCollator:
    """Sentence pairs masked for UniLM, one sub-task a batch (see the module).

    ``mix``: the probabilities of (bidirectional, l2r, r2l, seq2seq). Keys: the MLM keys, ``token_type_ids``
    (the sub-task's segments), ``task`` (an int, index into ``TASKS``), ``pair_labels`` (bidirectional
    batches), ``prefix_length`` [B] (seq2seq: the length of ``[CLS] A [SEP]``), ``attention_mask`` (padding).
    """

    def __init__(self, ids: SpecialIds, seed: int, mix: tuple[float, float, float, float] = (1 / 3, 1 / 6, 1 / 6, 1 / 3),
                 probability: float = 0.15, lengths: SpanLengths = NGRAMS):
        self.pairs = PairMLMCollator(ids, seed, "nsp", probability, max_ngram=2)  # max_ngram > 1: a row of length noise
        self.ids, self.seed, self.probability, self.lengths = ids, seed, probability, lengths
        self.mix = torch.tensor(mix, dtype=torch.float64)

    def __call__(self, samples: list[dict]) -> dict:
        task = batch_task(self.seed, samples, self.mix)
        pairs = self.pairs.lay_out(samples)
        ids, token_type, noise, lengths = pairs["ids"], pairs["token_type"], pairs["noise"], pairs["lengths"]
        candidate = ~self.pairs.is_special[ids]  # not special, not padding
        # Noise rows: selection order, 80/10/10 draw, random token, n-gram length.
        spans = select_spans(candidate, mask_budget(candidate, self.probability), noise[:, 0], noise[:, 3], self.lengths)
        input_ids, labels = mask_random_keep(ids, spans.span_id, noise[:, 1], noise[:, 2], self.pairs.regular_ids, self.ids.mask)
        a, b = SEGMENTS[TASKS[task]]
        batch = {"input_ids": input_ids, "labels": labels, "token_type_ids": torch.where(token_type == 0, a, b), "task": task,
                 "num_tokens": int(lengths.sum()), **padding_keys(lengths, ids.size(1))}
        if TASKS[task] == "bidirectional":
            batch["pair_labels"] = pairs["pair_labels"]
        if TASKS[task] == "seq2seq":  # [CLS] A [SEP]: the positions before B's first token
            batch["prefix_length"] = (token_type == 0).logical_and(torch.arange(ids.size(1)) < lengths[:, None]).sum(1)
        return batch
