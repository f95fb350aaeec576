"""GLM's autoregressive blank infilling (Du et al., 2022): one batch of ``[Part A | Part B]`` rows.

Span selection is ``spans``' (``place_spans``: Poisson lengths placed apart, ``select_sentences``,
``select_suffix``) and so is the assembly of the two parts (``blank_infilling``); this module draws
the batch's variant and hands the stack its keys.
"""

from __future__ import annotations

import torch

from lit_ptm.data.batch import Batch
from lit_ptm.data.collate.common import pad_windows, padding_keys, sample_noise, sample_seed
from lit_ptm.data.collate.spans import (
    SpanLengths, blank_infilling, mask_budget, place_spans, select_sentences, select_suffix,
)
from lit_ptm.tokenizer import SpecialIds

VARIANTS = ("token", "sentence", "document")  # [MASK] spans, [sMASK] whole sentences, one [gMASK] suffix
_VARIANT_STREAM = 0x474C4D  # "GLM": the batch's variant draw has a stream of its own


class GLMCollator:
    """GLM's blank infilling over DOC-SENTENCES windows (``[CLS] text [SEP]``, one document each).

    Each batch is one variant, drawn from ``probabilities`` (token, sentence, document) by a generator
    seeded with (seed, epoch, index) of the batch's first sample (a resumed run redraws it):
    - token: spans of lengths ~ Poisson(``poisson_mean``) truncated to 1..``max_span_length`` tokens,
      never touching, until round(``mask_ratio`` * n) of the n text tokens are covered; each is one [MASK];
    - sentence: whole sentences in random order until at least ``mask_ratio`` of the text is covered;
      each is one [sMASK];
    - document: one suffix of the text, its length uniform in [n / 2, n - 2]; it is one [gMASK].
    Part A (the row with the blanks) reads bidirectionally, Part B (the spans in random order,
    ``[SOP] x1 .. xl`` predicting ``x1 .. xl [EOP]``) causally, after all of Part A. Keys: input_ids,
    labels (Part B only), position_ids, block_position_ids, prefix_length (|A|), attention_mask (when
    padded), num_tokens.
    """

    def __init__(self, ids: SpecialIds, seed: int, probabilities: tuple[float, float, float] = (0.5, 0.3, 0.2),
                 mask_ratio: float = 0.15, poisson_mean: float = 3.0, max_span_length: int = 39):
        missing = [role for role in ("mask", "sop", "eop", "smask", "gmask") if getattr(ids, role) is None]
        if missing:
            raise ValueError(f"GLM's blank infilling needs the tokenizer's {' / '.join(missing)} tokens")
        self.ids, self.seed, self.mask_ratio = ids, seed, mask_ratio
        self.probabilities = torch.tensor(probabilities, dtype=torch.float64)
        self.lengths = SpanLengths("poisson", max_n=max_span_length, min_n=1, mean=poisson_mean)
        self.is_special = ids.special_table()
        self.mask_ids = {"token": ids.mask, "sentence": ids.smask, "document": ids.gmask}

    def variant(self, samples: list[dict]) -> str:
        """The batch's variant, from the (seed, epoch, index) of its first sample."""
        g = torch.Generator().manual_seed(sample_seed(self.seed ^ _VARIANT_STREAM, samples[0]["epoch"], samples[0]["index"]))
        return VARIANTS[int(torch.multinomial(self.probabilities, 1, generator=g))]

    def spans(self, samples: list[dict], variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(window ids [B, L], span ids [B, L] (1..S per row, in position order), span order scores [B, L])."""
        ids = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        # The text: every real token between the frame's [CLS] and [SEP], an [UNK] included (the selectors take
        # the text as one unbroken run: with [UNK] left out, a [gMASK] "suffix" came in pieces, spans covered
        # the [UNK]s as if they were not there, and a sentence holding one could never be blanked).
        real = torch.arange(ids.size(1)) < torch.tensor([len(s["ids"]) for s in samples])[:, None]
        candidate = real & (ids != self.ids.cls) & (ids != self.ids.sep)
        # Rows: span places (or sentence keys), span lengths (and the suffix's), Part B's order.
        noise = sample_noise(samples, self.seed, 3, ids.size(1))
        if variant == "token":
            span_id = place_spans(candidate, mask_budget(candidate, self.mask_ratio), noise[:, 0], noise[:, 1], self.lengths).span_id
        elif variant == "sentence":
            sentence = pad_windows(samples, "sentence", ids.size(1))
            span_id = select_sentences(candidate, sentence, mask_budget(candidate, self.mask_ratio), noise[:, 0]).span_id
        else:
            span_id = select_suffix(candidate, noise[:, 1, 0]).span_id
        return ids, span_id, noise[:, 2]

    def __call__(self, samples: list[dict]) -> Batch:
        variant = self.variant(samples)
        ids, span_id, order = self.spans(samples, variant)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        rows = blank_infilling(ids, span_id, order, self.mask_ids[variant], self.ids.sop, self.ids.eop, self.ids.pad, lengths)
        return {
            "input_ids": rows.input_ids, "labels": rows.labels, "position_ids": rows.position_ids,
            "block_position_ids": rows.block_position_ids, "prefix_length": rows.prefix_length,
            **padding_keys(rows.lengths, rows.input_ids.size(1)), "num_tokens": int(rows.lengths.sum()),
        }
