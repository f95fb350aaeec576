"""UniLM (Dong et al., 2019): one cloze task under four self-attention patterns, one pattern a batch.

Every batch is a batch of sentence pairs ``[CLS] A [SEP] B [SEP]`` with 15% of the tokens selected (80%
of the selections single tokens, 10% bigrams, 10% trigrams) and corrupted 80/10/10. The pairs are
contiguous text (the SOP packing, never swapped: B follows A in its document), as UniLM trained its
left-to-right, right-to-left and seq2seq LMs. What the batch's sub-task changes is what each token may
attend to (the objective's ``attention_mask``), the segment ids, and, on bidirectional batches only, B:

- bidirectional: every token sees every token; segments A = 0, B = 1; plus NSP (``pair_labels``): in a
  random half of the rows B is replaced by another row's B from another document (label 1, NotNext).
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
_NSP_STREAM = 0x5EED_0F_4E59  # and the NotNext draw apart from both


def batch_generator(seed: int, samples: list[dict], stream: int) -> torch.Generator:
    """A batch's own generator, seeded by (seed + stream, epoch, the first sample's index): a resumed run
    redraws the same batch."""
    first = samples[0]
    return torch.Generator().manual_seed(sample_seed(seed + stream, first["epoch"], first["index"]))


def batch_task(seed: int, samples: list[dict], mix: torch.Tensor) -> int:
    """The batch's sub-task (an index into TASKS), drawn with probabilities ``mix`` [4] from the batch's generator."""
    u = torch.rand(1, generator=batch_generator(seed, samples, _TASK_STREAM))
    return min(int(torch.searchsorted(mix.cumsum(0), u).item()), len(TASKS) - 1)


def next_sentence_pairs(seed: int, samples: list[dict]) -> list[dict]:
    """NSP from contiguous pairs: a random half of the rows take the B of another row of the batch (label
    1), the rest keep their own (label 0). Donors: a random cyclic order of the rows (a derangement), each
    row taking the first row after it in that order whose A is from another ``document``; a row with no
    such row keeps its B. Drawn from the batch's generator."""
    n = len(samples)
    g = batch_generator(seed, samples, _NSP_STREAM)
    swap, order = torch.rand(n, generator=g) < 0.5, torch.randperm(n, generator=g)
    documents = torch.tensor([s["document"] for s in samples])
    place = order.argsort()  # each row's place in the cycle
    candidates = order[(place[:, None] + torch.arange(1, n)) % n]  # [n, n - 1]: the rows after each, in order
    other = documents[candidates] != documents[:, None]
    swap &= other.any(1)
    donor = candidates.gather(1, other.int().argmax(1, keepdim=True)).squeeze(1) if n > 1 else torch.zeros(n, dtype=torch.long)
    return [{**s, "b": samples[d]["b"], "b_word_start": samples[d]["b_word_start"], "label": 1} if swapped else {**s, "label": 0}
            for s, swapped, d in zip(samples, swap.tolist(), donor.tolist())]


class UniLMCollator:
    """Sentence pairs masked for UniLM, one sub-task a batch (see the module).

    ``mix``: the probabilities of (bidirectional, l2r, r2l, seq2seq). Samples: SOP-packing pairs (A, B
    consecutive, with their ``document``). Keys: the MLM keys, ``token_type_ids``
    (the sub-task's segments), ``task`` (an int, index into ``TASKS``), ``pair_labels`` (bidirectional
    batches), ``prefix_length`` [B] (seq2seq: the length of ``[CLS] A [SEP]``), ``attention_mask`` (padding).
    """

    def __init__(self, ids: SpecialIds, seed: int, mix: tuple[float, float, float, float] = (1 / 3, 1 / 6, 1 / 6, 1 / 3),
                 probability: float = 0.15, lengths: SpanLengths = NGRAMS):
        # "nsp": the pairs as they come, never swapped; max_ngram > 1: a row of length noise
        self.pairs = PairMLMCollator(ids, seed, "nsp", probability, max_ngram=2)
        self.ids, self.seed, self.probability, self.lengths = ids, seed, probability, lengths
        self.mix = torch.tensor(mix, dtype=torch.float64)

    def __call__(self, samples: list[dict]) -> dict:
        task = batch_task(self.seed, samples, self.mix)
        if TASKS[task] == "bidirectional":
            samples = next_sentence_pairs(self.seed, samples)
        pairs = self.pairs.lay_out(samples)  # trimmed to fit (a new B: anew) and padded
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
