"""Collators: each objective's corruption as a pure function of (ids, boundaries, random numbers).

The batch-level callables here pad a list of windows and derive each sample's random stream from
(seed, epoch, sample index), so a batch is the same whichever worker builds it and whenever a
resumed run rebuilds it. The corruption itself is vectorised over the whole batch.
"""

from lit_ptm.data.collate.common import pad_windows, sample_noise, sample_seed
from lit_ptm.data.collate.causal import CausalLMCollator
from lit_ptm.data.collate.glm import GLMCollator
from lit_ptm.data.collate.masking import MLMCollator, SpanMLMCollator, mask_tokens
from lit_ptm.data.collate.permute import MPNetCollator, XLNetCollator, compact_positions, order_ranks
from lit_ptm.data.collate.pairs import PairMLMCollator, truncated_lengths
from lit_ptm.data.collate.seq2seq import BARTCollator, MASSCollator, T5Collator, encoder_decoder_batch, permute_sentences
from lit_ptm.data.collate.spans import (
    Blanks, SpanLengths, Spans, blank_infilling, delete_spans, place_spans, infill_spans, mask_budget, mask_random_keep, random_spans_noise,
    select_sentences, select_spans, select_suffix, sentinel_spans, span_bounds, span_starts,
)
from lit_ptm.data.collate.unilm import UniLMCollator

__all__ = [
    "CausalLMCollator", "GLMCollator", "MLMCollator", "UniLMCollator", "PairMLMCollator", "SpanMLMCollator", "T5Collator", "BARTCollator", "MASSCollator",
    "XLNetCollator", "MPNetCollator", "order_ranks", "compact_positions",
    "encoder_decoder_batch", "permute_sentences", "mask_tokens", "pad_windows", "sample_noise", "sample_seed",
    "truncated_lengths", "SpanLengths", "Spans", "select_spans", "random_spans_noise", "mask_budget", "span_starts",
    "span_bounds", "mask_random_keep", "sentinel_spans", "delete_spans", "infill_spans",
    "Blanks", "blank_infilling", "place_spans", "select_sentences", "select_suffix",
]
