from __future__ import annotations

import torch

from lit_ptm.data.batch import DataRecipe
from lit_ptm.data.collate import CausalLMCollator
from lit_ptm.nn import LMHead
from lit_ptm.objectives.base import LossParts, PretrainObjective


class CausalLM(PretrainObjective):
    """GPT: next-token prediction over contiguous packed windows, read causally."""

    causal = True
    special_roles = ("eos",)  # between packed documents

    def data_recipe(self) -> DataRecipe:
        # Windows of L + 1 tokens: inputs and their shifted labels.
        return DataRecipe(packings=("contiguous",), name="the CausalLM objective",
                          collator=lambda ids, seed, isolate_documents: CausalLMCollator(ids, isolate_documents=isolate_documents))

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.stack().embeddings.tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] at every position (for inspection; generation uses ``lit_ptm.generate``)."""
        batch = {"input_ids": input_ids, **({"attention_mask": attention_mask} if attention_mask is not None else {})}
        return self.lm_head(self.encode(batch).hidden)

    def loss_parts(self, batch):
        out = self.encode(batch)
        hidden, labels = out.hidden, batch["labels"]  # (B, T, H), (B, T)
        predicted = labels != -100
        if predicted.all():  # packed windows: no padding, skip the gather
            rows, targets = hidden.flatten(0, 1), labels.flatten()
        else:
            rows, targets = hidden[predicted], labels[predicted]
        loss, _ = self.lm_head.loss(rows, targets)
        return LossParts(loss=loss, num_predicted=targets.numel(), parts={"lm": loss}, aux=out.aux_losses)
