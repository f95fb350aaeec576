"""Permutation LM collators: XLNet's and MPNet's factorisation orders as masks, never as reordered tokens.

Both sample, per row, a set of targets among the non-special tokens (``spans.select_spans``) and a
random order over them; non-targets come first in the order (rank -1: everyone sees them, they see no
target). Tokens stay where they are: attention sees only roles and order indices, and every
position-dependent term (absolute positions, relative distances) comes from the positions carried in
the batch, so a layout in factorisation order would compute the same thing. Everything is batched
tensor work; the only per-sample Python is ``sample_noise`` seeding each sample's generator from
(seed, epoch, index), so a sample's targets and order do not depend on its batch mates.

- ``XLNetCollator``: partial prediction (~1/K of the non-special tokens, as whole-word n-grams with
  p(n) ~ 1/n, n <= ``max_ngram``), ``perm_mask`` in HF's sense and the targets' positions/labels.
  The content stream's ``input_ids`` are the windows, untouched (no [MASK]); any length, odd or even.
- ``MPNetCollator``: c = round(``probability`` n) targets in a random order, their 80/10/10-corrupted
  [M] slots appended (position compensation) and the two-stream masks of the reference
  implementation (``make_query_and_content_mask``), with padding and packed documents handled.
"""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import document_positions, pad_windows, sample_noise, window_keys
from lit_ptm.data.collate.spans import SpanLengths, mask_budget, mask_random_keep, select_spans
from lit_ptm.tokenizer import SpecialIds


def order_ranks(target: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A random factorisation order among each row's targets: [B, L] bool, [B, L] uniform -> rank [B, L]
    long, 0..P_b-1 on the targets in a random order, -1 on every other token (they come first)."""
    key = torch.where(target, noise, 2.0)  # targets first, in noise order
    rank = key.argsort(1).argsort(1)
    return torch.where(target, rank, -1)


def compact_positions(target: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's target positions in factorisation order: ([B, P] long, valid [B, P] bool), P the most
    targets of a row; padded slots point at position 0 (a row's [CLS], never a target)."""
    B, L = target.shape
    count = target.sum(1)
    P = int(count.max()) if B else 0
    # Target of rank r goes to column r; non-targets to a spare column P that is cut off.
    column = torch.where(target, rank, P)
    positions = torch.zeros(B, P + 1, dtype=torch.long).scatter_(1, column, torch.arange(L).expand(B, L))
    valid = torch.arange(P) < count[:, None]
    return positions[:, :P].masked_fill(~valid, 0), valid


class XLNetCollator:
    """XLNet's permutation LM with partial prediction (Yang et al. 2019; objectives.md "XLNet").

    Targets: whole-word n-grams (p(n) ~ 1/n, n = 1..``max_ngram``, ``SpanLengths("ngram")``) until
    round(n / ``partial_prediction``) of a row's n non-special tokens are selected; XLNet's
    ``mask_alpha`` context spacing between n-grams is not reproduced. The targets get a random order,
    non-targets rank lowest. Keys (besides ``window_keys``'s attention_mask / document_ids / position_ids):
    ``input_ids`` [B, L] the windows unchanged; ``perm_mask`` [B, L, L] bool, True where i may NOT see
    j: j is a target and rank(i) <= rank(j), or j is padding (HF's perm_mask; the content stream adds
    its own diagonal); ``target_positions`` [B, P] in factorisation order (padded slots: position 0)
    and ``labels`` [B, P] (-100 on padded slots). HF's ``target_mapping`` is
    ``one_hot(target_positions, L)``. No query row is empty: every row holds a [CLS] or [SEP], never a
    target, and so does every document of a SentenceWindows window (its closing [SEP]; the first also
    its [CLS]), so the earliest target of a document still sees a non-target with ``isolate_documents``.
    """

    def __init__(self, ids: SpecialIds, seed: int, partial_prediction: float = 6, max_ngram: int = 5,
                 isolate_documents: bool = True):
        if partial_prediction < 1:
            raise ValueError(f"partial_prediction (K) must be >= 1, not {partial_prediction}")
        self.ids, self.seed, self.isolate_documents = ids, seed, isolate_documents
        self.partial_prediction = partial_prediction
        self.lengths = SpanLengths("ngram", max_n=max_ngram)
        self.is_special = ids.special_table()

    def targets(self, samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(window ids [B, L], target [B, L] bool, rank [B, L] long: -1 off the targets)."""
        ids = pad_windows(samples, "ids", self.ids.pad)
        candidate = ~self.is_special[ids]  # not special, not padding
        # Rows: n-gram order scores, n-gram lengths, factorisation order.
        noise = sample_noise(samples, self.seed, 3, ids.size(1))
        spans = select_spans(candidate, mask_budget(candidate, 1 / self.partial_prediction), noise[:, 0], noise[:, 1],
                             self.lengths, pad_windows(samples, "word_start", True))
        target = spans.span_id > 0
        return ids, target, order_ranks(target, noise[:, 2])

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids, target, rank = self.targets(samples)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        real = torch.arange(ids.size(1)) < lengths[:, None]
        perm_mask = (target[:, None, :] & (rank[:, :, None] <= rank[:, None, :])) | ~real[:, None, :]
        positions, valid = compact_positions(target, rank)
        labels = ids.gather(1, positions).masked_fill(~valid, -100)
        return {"input_ids": ids, "perm_mask": perm_mask, "target_positions": positions, "labels": labels,
                "num_tokens": int(lengths.sum()), **window_keys(samples, ids.size(1), self.isolate_documents)}


class MPNetCollator:
    """MPNet's masked and permuted LM (Song et al. 2020; objectives.md "MPNet"), tokens kept in place.

    c = round(``probability`` n) of a row's n non-special tokens (at least one) are predicted, in a
    random order k = 0..c-1 (the last c of the permutation; the other tokens' order does not matter:
    they see each other and no predicted token). Their [M] slots, 80/10/10-corrupted copies of the
    targets, are appended with the targets' positions (position compensation). Keys:
    ``input_ids`` [B, L+C] = [window | slots] (padding: pad id); ``position_ids`` [B, L+C] = [positions
    (restarting per packed document with ``isolate_documents``) | target positions];
    ``query_ids`` [B, C] = the slots; ``query_position_ids`` [B, C]; ``target_positions`` [B, C] in
    order (padded slots: 0); ``labels`` [B, C] (-100 on padded slots);
    ``content_mask`` [B, L+C, L+C] and ``query_mask`` [B, C, L+C], bool, True where row i may attend
    column j: non-predicted tokens are seen by all; predicted token k_j by predicted content rows k >= k_j
    and query rows k > k_j; slot s by non-predicted and slot content rows, by predicted content rows
    k < s and by query rows k <= s. Padding (window padding and padded slots) is never seen and its
    rows see only themselves; with ``isolate_documents`` a row sees only its own document. The masks
    are complete: the batch carries no attention_mask or document_ids.
    """

    def __init__(self, ids: SpecialIds, seed: int, probability: float = 0.15, isolate_documents: bool = True):
        self.ids, self.seed, self.probability, self.isolate_documents = ids, seed, probability, isolate_documents
        self.regular_ids = ids.regular_ids()
        self.is_special = ids.special_table()

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        B, L = ids.shape
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        real = torch.arange(L) < lengths[:, None]
        candidate = ~self.is_special[ids]
        # Rows: selection scores, factorisation order, 80/10/10 draws, random tokens.
        noise = sample_noise(samples, self.seed, 4, L)
        target = select_spans(candidate, mask_budget(candidate, self.probability), noise[:, 0]).span_id > 0
        rank = order_ranks(target, noise[:, 1])
        positions, valid = compact_positions(target, rank)  # [B, C]
        C = positions.size(1)
        # Slots: each target's 80/10/10 draws are those of its own position.
        slots, labels = mask_random_keep(ids.gather(1, positions), valid.long(), noise[:, 2].gather(1, positions),
                                         noise[:, 3].gather(1, positions), self.regular_ids, self.ids.mask)
        slots = slots.masked_fill(~valid, self.ids.pad)
        documents = pad_windows(samples, "document", -1, L)
        packed = self.isolate_documents and bool((documents.masked_fill(documents < 0, 0) != 0).any())
        token_positions = document_positions(documents) if packed else torch.arange(L).expand(B, L)
        slot_positions = token_positions.gather(1, positions).masked_fill(~valid, 0)

        # Columns j of [window (L) | slots (C)]: role and order index.
        s_index = torch.arange(C).expand(B, C)
        nonpred = torch.cat([real & ~target, torch.zeros(B, C, dtype=torch.bool)], 1)  # [B, L+C]
        pred = torch.cat([target, torch.zeros(B, C, dtype=torch.bool)], 1)
        slot = torch.cat([torch.zeros(B, L, dtype=torch.bool), valid], 1)
        order = torch.cat([rank, s_index], 1)  # k_j for predicted tokens, s_j for slots
        # Rows: (A, S) = predicted tokens with k_j < A and slots with s_j >= S are seen.
        content_a = torch.cat([torch.where(target, rank + 1, 0), torch.zeros(B, C, dtype=torch.long)], 1)  # [B, L+C]
        query_a = s_index  # query k: (k, k)

        def allowed(a: torch.Tensor) -> torch.Tensor:  # [B, R] -> [B, R, L+C]
            a = a[:, :, None]
            return (nonpred[:, None, :] | (pred[:, None, :] & (order[:, None, :] < a))
                    | (slot[:, None, :] & (order[:, None, :] >= a)))

        content_mask, query_mask = allowed(content_a), allowed(query_a)
        if packed:
            doc = torch.cat([documents, documents.gather(1, positions)], 1)  # [B, L+C]
            content_mask &= doc[:, :, None] == doc[:, None, :]
            query_mask &= doc[:, L:, None] == doc[:, None, :]
        # Padding rows (window padding, padded slots, padded queries) see only themselves.
        row_real = torch.cat([real, valid], 1)
        eye = torch.eye(L + C, dtype=torch.bool)
        content_mask = torch.where(row_real[:, :, None], content_mask, eye)
        query_mask = torch.where(valid[:, :, None], query_mask, eye[L:])
        return {
            "input_ids": torch.cat([ids, slots], 1), "position_ids": torch.cat([token_positions, slot_positions], 1),
            "query_ids": slots, "query_position_ids": slot_positions, "target_positions": positions, "labels": labels,
            "content_mask": content_mask, "query_mask": query_mask, "num_tokens": int(lengths.sum()),
        }
