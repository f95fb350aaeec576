from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lit_ptm.data.collate import MLMCollator, PairMLMCollator
from lit_ptm.errors import ConfigError
from lit_ptm.nn import LMHead, ModelConfig, PairHead
from lit_ptm.objectives.base import OptimConfig, PretrainObjective


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
        pretrained: str | None = None,
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
        # The packings this objective can use (the first is its default): sentence pairs for a pair
        # task, else whole-sentence windows of L tokens (contiguous windows are GPT's L + 1).
        self.packings = ("doc_sentences", "full_sentences") if pair_task == "none" else (f"{pair_task}_pairs",)
        self.packing = self.packings[0]
        super().__init__(config, optim, pretrained)

    special_roles = ("cls", "sep", "mask")

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.transformer.embeddings.tokens)
        V = self.config.vocab_size
        self.accuracy = torch.nn.ModuleDict(  # keys are not "train": ModuleDict forbids Module attribute names
            {f"{s}_acc": MulticlassAccuracy(num_classes=V, average="micro", validate_args=False) for s in ("train", "val", "test")}
        )
        if self.pair_task != "none":
            self.pair_head = PairHead(self.config)
            self.pair_accuracy = torch.nn.ModuleDict(
                {f"{s}_acc": MulticlassAccuracy(num_classes=2, average="micro") for s in ("train", "val", "test")}
            )

    def collator(self, ids, seed, isolate_documents):
        if self.pair_task != "none":
            return PairMLMCollator(ids, seed, self.pair_task, self.mlm_probability, self.whole_word_mask, self.max_ngram)
        return MLMCollator(ids, seed, self.mlm_probability, self.whole_word_mask, isolate_documents, self.max_ngram)

    def forward(self, input_ids, **kw) -> torch.Tensor:
        return self.lm_head(self.transformer(input_ids, **kw))

    def loss_parts(self, batch):
        hidden = self.encode(batch)  # (B, T, H)
        labels = batch["labels"]
        predicted = labels != -100
        targets = labels[predicted]
        # The head runs on the masked positions only: (P, H) -> loss, never (B, T, V) logits.
        mlm_loss, predictions = self.lm_head.loss(hidden[predicted], targets, want_argmax=True)
        parts = {"loss": mlm_loss, "lm_loss": mlm_loss, "num_predicted": targets.numel(), "predictions": predictions, "targets": targets}
        if self.pair_task != "none":
            pair_logits = self.pair_head(hidden)  # (B, 2)
            parts["pair_loss"] = F.cross_entropy(pair_logits.float(), batch["pair_labels"])
            parts["pair_predictions"] = pair_logits.detach().argmax(-1)
            parts["loss"] = mlm_loss + parts["pair_loss"]
        return parts

    def log_extra(self, split, parts, batch):
        step = split == "train"
        n = len(batch["input_ids"])  # epoch means weight batches by their size
        acc = self.accuracy[f"{split}_acc"]
        acc(parts["predictions"], parts["targets"])
        self.log(f"{split}/mlm_acc", acc, on_step=step, on_epoch=not step, batch_size=n)
        if self.pair_task != "none":
            task = self.pair_task
            self.log(f"{split}/mlm_loss", parts["lm_loss"], on_step=step, on_epoch=not step, batch_size=n)
            self.log(f"{split}/{task}_loss", parts["pair_loss"], on_step=step, on_epoch=not step, batch_size=n)
            pair_acc = self.pair_accuracy[f"{split}_acc"]
            pair_acc(parts["pair_predictions"], batch["pair_labels"])
            self.log(f"{split}/{task}_acc", pair_acc, on_step=step, on_epoch=not step, batch_size=n)
