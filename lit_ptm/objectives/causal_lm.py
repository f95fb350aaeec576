from __future__ import annotations

import torch

from lit_ptm.data.collate import CausalLMCollator
from lit_ptm.nn import LMHead
from lit_ptm.objectives.base import PretrainObjective


class CausalLM(PretrainObjective):
    """GPT: next-token prediction over contiguous packed windows, in decoder (causal) mode."""

    packings = ("contiguous",)  # windows of L + 1 tokens: inputs and their shifted labels
    packing = "contiguous"
    causal = True
    special_roles = ("eos",)  # between packed documents

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.transformer.embeddings.tokens)

    def collator(self, ids, seed, isolate_documents):
        return CausalLMCollator(ids, isolate_documents=isolate_documents)

    def forward(self, input_ids, **kw) -> torch.Tensor:
        """Logits [B, T, V] at every position (for generation and inspection)."""
        return self.lm_head(self.transformer(input_ids, **kw))

    def loss_parts(self, batch):
        hidden = self.encode(batch)  # (B, T, H)
        labels = batch["labels"]
        predicted = labels != -100
        if predicted.all():  # packed windows: no padding, skip the gather
            rows, targets = hidden.flatten(0, 1), labels.flatten()
        else:
            rows, targets = hidden[predicted], labels[predicted]
        loss, _ = self.lm_head.loss(rows, targets)
        return {"loss": loss, "num_predicted": targets.numel()}
