from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from lit_ptm.data.collate import MLMCollator
from lit_ptm.nn import LMHead, ModelConfig
from lit_ptm.objectives.base import OptimConfig, PretrainObjective


class MaskedLM(PretrainObjective):
    """BERT / RoBERTa masked LM with dynamic masking (a new mask each time a sample is drawn).

    The LM head runs only on the selected positions (~15% of tokens), never on the whole sequence.
    With FULL-SENTENCES packing and no NSP this is the RoBERTa recipe.
    """

    packing = "doc_sentences"

    def __init__(
        self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
        mlm_probability: float = 0.15, whole_word_mask: bool = False,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"model.mlm_probability={mlm_probability} must be in (0, 1)")
        self.mlm_probability, self.whole_word_mask = mlm_probability, whole_word_mask
        super().__init__(config, optim)

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.transformer.embeddings.tokens)
        V = self.config.vocab_size
        self.accuracy = torch.nn.ModuleDict(  # keys are not "train": ModuleDict forbids Module attribute names
            {f"{s}_acc": MulticlassAccuracy(num_classes=V, average="micro", validate_args=False) for s in ("train", "val", "test")}
        )

    def collator(self, ids, seed, isolate_documents):
        return MLMCollator(ids, seed, self.mlm_probability, self.whole_word_mask, isolate_documents)

    def forward(self, input_ids, **kw) -> torch.Tensor:
        return self.lm_head(self.transformer(input_ids, **kw))

    def loss_parts(self, batch):
        hidden = self.encode(batch)  # (B, T, H)
        labels = batch["labels"]
        predicted = labels != -100
        targets = labels[predicted]
        # The head runs on the masked positions only: (P, H) -> loss, never (B, T, V) logits.
        loss, predictions = self.lm_head.loss(hidden[predicted], targets, want_argmax=True)
        return {"loss": loss, "num_predicted": targets.numel(), "predictions": predictions, "targets": targets}

    def log_extra(self, split, parts, batch):
        acc = self.accuracy[f"{split}_acc"]
        acc(parts["predictions"], parts["targets"])
        self.log(f"{split}/mlm_acc", acc, on_step=split == "train", on_epoch=split != "train")
