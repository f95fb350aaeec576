"""The keys of a collated batch, written down once: collators produce them, objectives read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypedDict

import torch


class Batch(TypedDict, total=False):
    input_ids: torch.Tensor  # [B, L] the (corrupted) input; an encoder-decoder's encoder input [B, Ls]; MPNet: [window (L) | slots (C)]
    labels: torch.Tensor  # [B, L] the target token per position, -100 where nothing is predicted (encoder-decoder: [B, Lt]; permutation LM: [B, P], per target_positions slot)
    attention_mask: torch.Tensor  # [B, L] bool, True for real tokens; absent when no row is padded
    document_ids: torch.Tensor  # [B, L] packed-document id per token (padding: -1); absent: one document a row
    position_ids: torch.Tensor  # [B, L] positions restarting at each packed document; absent: 0..L-1; MPNet: [B, L+C], always present
    block_position_ids: torch.Tensor  # [B, L] GLM: the position inside a blank (0 on Part A, 1..l+1 in a span of Part B)
    token_type_ids: torch.Tensor  # [B, L] segment (A = 0, B = 1) of sentence pairs; UniLM: its sub-task's (2 .. 5)
    prefix_length: torch.Tensor  # [B] a prefix LM's bidirectional prefix (UniLM seq2seq, GLM Part A)
    pair_labels: torch.Tensor  # [B] NSP (1 = random B) / SOP (1 = swapped) targets
    span_left: torch.Tensor  # [B, L] SpanBERT's SBO: position just before the token's span (0 where labels are -100)
    span_right: torch.Tensor  # [B, L] position just after the token's span (0 where labels are -100)
    span_offset: torch.Tensor  # [B, L] the token's 0-based index inside its span (0 where labels are -100)
    decoder_input_ids: torch.Tensor  # [B, Lt] an encoder-decoder's decoder input: decoder_start, then the target shifted right
    decoder_attention_mask: torch.Tensor  # [B, Lt] bool, True for real decoder tokens; absent when no row is padded
    decoder_position_ids: torch.Tensor  # [B, Lt] the decoder tokens' positions (MASS: the fragment's own); absent: 0..Lt-1
    perm_mask: torch.Tensor  # [B, L, L] bool, XLNet (HF's sense): True where i may NOT see j (j a target ranked at or after i, or padding)
    target_positions: torch.Tensor  # [B, P] permutation LM: the targets' positions in factorisation order (padded slots: 0)
    query_ids: torch.Tensor  # [B, C] MPNet: the query stream's tokens, the targets' 80/10/10-corrupted [M] slots (padding: pad id)
    query_position_ids: torch.Tensor  # [B, C] MPNet: the query stream's positions (the targets'; padded slots: 0)
    content_mask: torch.Tensor  # [B, L+C, L+C] bool, MPNet: True where content row i may attend j (padding, documents included)
    query_mask: torch.Tensor  # [B, C, L+C] bool, MPNet: True where query k may attend j (padding, documents included)
    task: int  # UniLM: the batch's sub-task, an index into lit_ptm.data.collate.unilm.TASKS (one a batch: a plain int)
    num_tokens: int  # real tokens in the batch, encoder + decoder (a plain int: logging throughput never waits on the device)


@dataclass(frozen=True)
class DataRecipe:
    """What an objective asks of the pretraining data, handed to the data module explicitly.

    packings: the window builders its collator accepts; the first is its default.
    collator: ``collator(special_ids, seed, isolate_documents) -> callable(samples) -> Batch``.
    name: how errors name the objective ("the MaskedLM objective with model.pair_task=nsp").
    streams: batches as streams (``sampling.StreamSampler``): row b of a batch continues row b of the
        previous one, in corpus order (a recurrence memory: XLNet's ``mem_len``).
    """

    packings: tuple[str, ...]
    collator: Callable
    name: str = "the objective"
    streams: bool = False
