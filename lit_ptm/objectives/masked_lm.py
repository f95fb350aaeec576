from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lit_ptm.data.batch import DataRecipe
from lit_ptm.data.collate import MLMCollator, PairMLMCollator
from lit_ptm.errors import ConfigError
from lit_ptm.nn import LMHead, ModelConfig, PairHead
from lit_ptm.objectives.base import LossParts, OptimConfig, PretrainObjective


class MaskedLM(PretrainObjective):
    """BERT / RoBERTa masked LM with dynamic masking (a new mask each time a sample is drawn),
    optionally with a sentence-pair task on the pooled [CLS] state: ``pair_task: nsp`` (BERT's
    next-sentence prediction) or ``sop`` (ALBERT's sentence-order prediction). Loss = MLM + pair.

    The LM head runs only on the selected positions (~15% of tokens), never on the whole sequence.
    With FULL-SENTENCES packing and no pair task this is the RoBERTa recipe.
    """

    def __init__(
        self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
        mlm_probability: float = 0.15, whole_word_mask: bool = False, max_ngram: int = 1, pair_task: Literal["none", "nsp", "sop"] = "none",
        pretrained: str | None = None, compile: bool = False,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"model.mlm_probability={mlm_probability} must be in (0, 1)")
        if pair_task not in ("none", "nsp", "sop"):
            raise ConfigError(f"model.pair_task={pair_task!r} is not one of none, nsp, sop")
        if max_ngram < 1:
            raise ConfigError(f"model.max_ngram={max_ngram} must be at least 1")
        self.mlm_probability, self.whole_word_mask, self.pair_task = mlm_probability, whole_word_mask, pair_task
        if pair_task != "none" and config.type_vocab_size < 2:
            raise ConfigError(
                f"model.pair_task={pair_task} lays out [CLS] A [SEP] B [SEP] with segment ids 0 and 1: it needs "
                f"model.config.type_vocab_size >= 2 (got {config.type_vocab_size})"
            )
        self.max_ngram = max_ngram  # > 1: ALBERT's n-gram masking over whole words, p(n) ~ 1/n
        super().__init__(config, optim, pretrained, compile)

    special_roles = ("cls", "sep", "mask")

    def data_recipe(self) -> DataRecipe:
        """Sentence pairs for a pair task, else whole-sentence windows of L tokens (contiguous windows are
        GPT's L + 1); dynamic masking in the collator."""
        if self.pair_task != "none":
            def collator(ids, seed, isolate_documents):
                return PairMLMCollator(ids, seed, self.pair_task, self.mlm_probability, self.whole_word_mask, self.max_ngram)

            return DataRecipe(packings=(f"{self.pair_task}_pairs",), collator=collator,
                              name=f"the MaskedLM objective with model.pair_task={self.pair_task}")

        def collator(ids, seed, isolate_documents):
            return MLMCollator(ids, seed, self.mlm_probability, self.whole_word_mask, isolate_documents, self.max_ngram)

        return DataRecipe(packings=("doc_sentences", "full_sentences"), collator=collator,
                          name="the MaskedLM objective")

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.stack().embeddings.tokens)
        self.track_accuracy("mlm", self.config.vocab_size)
        if self.pair_task != "none":
            self.pair_head = PairHead(self.config)
            self.track_accuracy(self.pair_task, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] at every position (for inspection)."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.lm_head(self.encode({k: v for k, v in batch.items() if v is not None}).hidden)

    def loss_parts(self, batch):
        return self.mlm_loss_parts(batch, self.encode(batch))

    def mlm_loss_parts(self, batch, out):
        """The MLM (+ pair task) loss parts from the stack's output ``out`` for ``batch``."""
        hidden, labels = out.hidden, batch["labels"]  # (B, T, H), (B, T)
        predicted = labels != -100
        targets = labels[predicted]
        # The head runs on the masked positions only: (P, H) -> loss, never (B, T, V) logits.
        mlm_loss, predictions = self.lm_head.loss(hidden[predicted], targets, want_argmax=True)
        parts = LossParts(loss=mlm_loss, num_predicted=targets.numel(), parts={"mlm": mlm_loss}, lm_loss=mlm_loss,
                          accuracies={"mlm": (predictions, targets)}, aux=out.aux_losses)
        if self.pair_task != "none" and "pair_labels" in batch:  # (UniLM: its bidirectional batches only)
            pair_logits = self.pair_head(hidden)  # (B, 2)
            pair_loss = F.cross_entropy(pair_logits.float(), batch["pair_labels"])
            parts.parts[self.pair_task] = pair_loss
            parts.accuracies[self.pair_task] = (pair_logits.detach().argmax(-1), batch["pair_labels"])
            parts.loss = mlm_loss + pair_loss
        return parts
