"""GLM (Du et al., 2022): autoregressive blank infilling over one stack with 2D positions."""

from __future__ import annotations

import torch

from lit_ptm.data.batch import Batch, DataRecipe
from lit_ptm.errors import ConfigError
from lit_ptm.nn import AttentionMask, LMHead, ModelConfig
from lit_ptm.objectives.base import LossParts, OptimConfig, PretrainObjective


class GLM(PretrainObjective):
    """Blank infilling: spans of a window are blanked in Part A (read bidirectionally) and written
    back, in random order, in Part B (read causally, seeing all of Part A and the earlier spans). Each
    batch is one variant (``data.collate.GLMCollator``): token spans (lengths ~ Poisson(``poisson_mean``),
    1..``max_span_length``, ``mask_ratio`` of the text) with [MASK], whole sentences with [sMASK]
    (at least ``mask_ratio``), or a suffix of 50-100% with [gMASK], drawn with probabilities
    (1 - ``sentence_probability`` - ``document_probability``, ``sentence_probability``,
    ``document_probability``), as GLM trains its general models. Positions are 2D: the position in
    Part A (a span's tokens take its blank's) and the position inside the span (the stack's second
    table, ``model.config.block_position_embedding``). Loss: next-token cross-entropy over Part B.

    The backbone reads bidirectionally (``causal`` False: Part A's pattern), so fine-tuning takes it as
    an encoder. HF has no GLM architecture: a GLM run does not export.
    """

    special_roles = ("cls", "sep", "mask", "sop", "eop", "smask", "gmask")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), mask_ratio: float = 0.15,
                 poisson_mean: float = 3.0, max_span_length: int = 39, sentence_probability: float = 0.3,
                 document_probability: float = 0.2, pretrained: str | None = None, compile: bool = False):
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={mask_ratio} must be in (0, 1)")
        if not poisson_mean > 0:
            raise ConfigError(f"model.poisson_mean={poisson_mean} must be positive")
        if max_span_length < 1:
            raise ConfigError(f"model.max_span_length={max_span_length} must be at least 1")
        for key, value in (("sentence_probability", sentence_probability), ("document_probability", document_probability)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{key}={value} must be in [0, 1]")
        if sentence_probability + document_probability > 1.0:
            raise ConfigError(f"model.sentence_probability={sentence_probability} + model.document_probability="
                              f"{document_probability} exceed 1 (the rest is the token-span variant's)")
        self.require_architecture(config)
        self.mask_ratio, self.poisson_mean, self.max_span_length = mask_ratio, poisson_mean, max_span_length
        self.probabilities = (1.0 - sentence_probability - document_probability, sentence_probability, document_probability)
        super().__init__(config, optim, pretrained, compile)

    @staticmethod
    def require_architecture(config: ModelConfig) -> None:
        """What GLM's inputs index (also asked by a fresh Seq2Seq in GLM's layout)."""
        if not config.block_position_embedding:
            raise ConfigError("model.config.block_position_embedding=false: GLM's 2D positions need the second position "
                              "table (set it true, as configs/glm.yaml does)")
        if config.position_embedding != "learned":
            raise ConfigError(f"model.config.position_embedding={config.position_embedding!r}: GLM's 2D positions are "
                              "learned tables (position_embedding: learned)")

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate import GLMCollator

        def collator(ids, seed, isolate_documents):
            return GLMCollator(ids, seed, self.probabilities, self.mask_ratio, self.poisson_mean, self.max_span_length)

        return DataRecipe(packings=("doc_sentences",), collator=collator, name="the GLM objective")

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.stack().embeddings.tokens)
        self.track_accuracy("lm", self.config.vocab_size)

    def attention_mask(self, batch: Batch) -> AttentionMask:
        """Part A (the first ``prefix_length`` positions) bidirectional, Part B causal after it."""
        return AttentionMask.from_batch(batch, causal=True)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, block_position_ids: torch.Tensor,
                prefix_length: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] at every position of ``[Part A | Part B]`` rows (for inspection)."""
        batch = {"input_ids": input_ids, "position_ids": position_ids, "block_position_ids": block_position_ids,
                 "prefix_length": prefix_length, **({"attention_mask": attention_mask} if attention_mask is not None else {})}
        return self.lm_head(self.encode(batch).hidden)

    def loss_parts(self, batch):
        out = self.encode(batch)
        predicted = batch["labels"] != -100
        targets = batch["labels"][predicted]
        # The head runs on Part B's rows only, never on (B, T, V) logits.
        loss, predictions = self.lm_head.loss(out.hidden[predicted], targets, want_argmax=True)
        return LossParts(loss=loss, num_predicted=targets.numel(), parts={"lm": loss}, accuracies={"lm": (predictions, targets)},
                         aux=out.aux_losses)
