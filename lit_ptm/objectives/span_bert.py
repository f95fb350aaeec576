"""SpanBERT (Joshi et al., 2020): span masking over whole words plus the span boundary objective."""

from __future__ import annotations


from lit_ptm.data.batch import DataRecipe
from lit_ptm.errors import ConfigError
from lit_ptm.nn import ModelConfig, SpanBoundaryHead
from lit_ptm.nn.losses import linear_cross_entropy
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.objectives.masked_lm import MaskedLM


class SpanBERT(MaskedLM):
    """Masked LM over spans of whole words (lengths ~ Geometric(p) clipped to ``max_span_words``, 15%
    of the tokens, one 80/10/10 decision per span), single contiguous segments, no NSP; plus the span
    boundary objective (SBO): every masked token is also predicted from the states of the two tokens
    just outside its span and its position inside the span. Loss = MLM + SBO, logged as
    ``{split}/mlm_loss`` and ``{split}/sbo_loss``. Fine-tuning takes the stack, as from BERT.

    As SpanBERT's code, sampled spans that touch are merged (one decision, boundaries outside both).
    Where this differs from it: the SBO head predicts through the MLM head's output bias (SpanBERT's
    has its own) and its offset table is H wide with 32 rows (SpanBERT's: 200 wide, 20 rows); a span at
    the start of a document in FULL-SENTENCES windows has the previous document's [SEP] as its left
    boundary (DOC-SENTENCES, the recipe's packing, never does)."""

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), mlm_probability: float = 0.15,
                 geometric_p: float = 0.2, max_span_words: int = 10, pretrained: str | None = None, compile: bool = False):
        if not 0.0 < geometric_p <= 1.0:
            raise ConfigError(f"model.geometric_p={geometric_p} must be in (0, 1]")
        if max_span_words < 1:
            raise ConfigError(f"model.max_span_words={max_span_words} must be at least 1")
        self.geometric_p, self.max_span_words = geometric_p, max_span_words
        super().__init__(config, optim, mlm_probability, whole_word_mask=True, pair_task="none", pretrained=pretrained, compile=compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate import SpanMLMCollator

        def collator(ids, seed, isolate_documents):
            return SpanMLMCollator(ids, seed, self.mlm_probability, self.geometric_p, self.max_span_words, isolate_documents)

        return DataRecipe(packings=("doc_sentences", "full_sentences"), collator=collator, name="the SpanBERT objective")

    def build_heads(self) -> None:
        super().build_heads()
        self.sbo_head = SpanBoundaryHead(self.config)
        self.track_accuracy("sbo", self.config.vocab_size)

    def loss_parts(self, batch):
        out = self.encode(batch)
        parts = self.mlm_loss_parts(batch, out)
        hidden = out.hidden  # (B, T, H)
        predicted = batch["labels"] != -100
        rows = predicted.nonzero(as_tuple=True)  # (b, t) of the P masked tokens
        left = hidden[rows[0], batch["span_left"][predicted]]  # (P, H): the token before the span
        right = hidden[rows[0], batch["span_right"][predicted]]  # (P, H): the token after it
        states = self.sbo_head(left, right, batch["span_offset"][predicted])  # (P, E)
        targets = batch["labels"][predicted]
        # The tied output projection and the MLM head's bias: SBO predicts in the same vocabulary.
        sbo_loss, predictions = linear_cross_entropy(states, self.lm_head.output_weight, self.lm_head.bias, targets, True)
        parts.parts["sbo"] = sbo_loss
        parts.accuracies["sbo"] = (predictions, targets)
        parts.loss = parts.loss + sbo_loss
        return parts
