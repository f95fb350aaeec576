"""Token classification (NER-style BIO tags over words), scored by entity-level precision / recall / F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from lit_ptm.data.collate.common import pad_windows
from lit_ptm.data.corpus import CorpusError
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.tasks.base import FINETUNE_OPTIM, FinetuneTask
from lit_ptm.tasks.features import IGNORE, align_word_labels, encode_words, word_predictions
from lit_ptm.tasks.records import field, label_order, label_text


def bio_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities (type, first word, last word) of a BIO (IOB2) sequence, as conlleval reads them: an
    entity starts at B-X, or at an I-X that does not continue an entity of type X; it ends before
    any tag that does not continue it."""
    entities, current = set(), None  # current: [type, start]
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            entities.add((current[0], current[1], i - 1))
            current = None
        if prefix == "B" or (prefix == "I" and not continues):
            current = [kind, i]
    return entities


class EntityF1(Metric):
    """Entity-level precision, recall and F1 (exact type and span), summed over ranks."""

    def __init__(self):
        super().__init__()
        for name in ("true_positives", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predicted: list[list[str]], gold: list[list[str]]) -> None:
        for p, g in zip(predicted, gold):
            pe, ge = bio_entities(p), bio_entities(g)
            self.true_positives += len(pe & ge)
            self.predicted += len(pe)
            self.gold += len(ge)

    def compute(self) -> dict[str, torch.Tensor]:
        precision = self.true_positives / self.predicted.clamp(min=1)
        recall = self.true_positives / self.gold.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}


class TokenClassification(FinetuneTask):
    """A tag per word (``data.tokens_field``: list of words, ``data.tags_field``: list of tags).

    Each word's tag is predicted at its first sub-word token (the others are ignored in the loss);
    words cut off by ``data.max_length`` are predicted "O" and count as misses. The tag set is read
    from the training file and kept in the checkpoint. Tags are strings or integers, kept as strings
    (the entity metrics read BIO names such as "B-PER"; integer tag ids hold no entity types).
    """

    def __init__(
        self, pretrained: str | None = None, config: ModelConfig = ModelConfig(), optim: OptimConfig = FINETUNE_OPTIM,
        layer_decay: float = 1.0, freeze_embeddings: bool = False, predictions_file: str | None = None,
        from_scratch: bool = False, causal: bool | None = None,
        labels: list[str] | None = None, classifier_dropout: float = 0.1,
    ):
        super().__init__(pretrained, config, optim, layer_decay, freeze_embeddings, predictions_file, from_scratch, causal)
        self.labels, self.classifier_dropout = labels, classifier_dropout

    @property
    def labels_known(self) -> bool:
        return self.labels is not None

    def build_head(self, pretrained_state):
        self.dropout = nn.Dropout(self.classifier_dropout)
        self.head = nn.Linear(self.config.hidden_size, len(self.labels))
        nn.init.normal_(self.head.weight, std=self.config.init_std)
        nn.init.zeros_(self.head.bias)
        self.entity_f1 = nn.ModuleDict({"val_": EntityF1(), "test_": EntityF1()})

    def text_fields(self, data) -> tuple[str, ...]:
        return (data.tokens_field,)

    def build_features(self, records, split, data):
        path = data.file(split)
        tags_of = lambda r: [  # noqa: E731
            label_text(t, path, r["_line"], f"{data.tags_field}[{i}]") for i, t in enumerate(field(r, data.tags_field, path, list))
        ]
        words = [field(r, data.tokens_field, path, list) for r in records]
        tags = [tags_of(r) for r in records] if split != "predict" else [None] * len(records)
        if split == "train" and not self.labels_known:
            every = {t for r in data.records[split] for t in tags_of(r)}  # the whole file's tags
            self.labels = sorted(every, key=lambda t: (t != "O", t.partition("-")[2], label_order(t)))
            self.hparams["labels"] = self.labels
        index = {t: i for i, t in enumerate(self.labels)}
        features = []
        for r, ws, ts in zip(records, words, tags):
            if ts is not None and len(ts) != len(ws):
                raise CorpusError(f"{path}:{r['_line']}: {len(ws)} words but {len(ts)} tags")
            ids, word_ids = encode_words(data.tokenizer, [str(w) for w in ws], data.max_length, self.reads_causally())
            feature = {"ids": torch.tensor(ids), "word_ids": word_ids, "num_words": len(ws), "id": r.get(data.id_field, r["_line"])}
            if ts is not None:
                unknown = [t for t in ts if t not in index]
                if unknown:
                    raise CorpusError(f"{path}:{r['_line']}: tag {unknown[0]!r} is not among the training tags {self.labels}")
                feature["labels"] = torch.tensor(align_word_labels(word_ids, [index[t] for t in ts]))
                feature["tags"] = list(ts)
            features.append(feature)
        return features

    def collate(self, samples):
        ids = pad_windows(samples, "ids", self.trainer.datamodule.tokenizer.ids.pad)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        batch = {"input_ids": ids, "lengths": lengths, "index": torch.tensor([s["index"] for s in samples]),
                 "ids": [s["id"] for s in samples], "word_ids": [s["word_ids"] for s in samples],
                 "num_words": [s["num_words"] for s in samples]}
        real = torch.arange(ids.size(1)) < lengths[:, None]
        if not real.all():
            batch["attention_mask"] = real
        if all("labels" in s for s in samples):
            batch["labels"] = pad_windows(samples, "labels", IGNORE)
            batch["tags"] = [s["tags"] for s in samples]
        return batch

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.dropout(self.encode(batch))).float()  # (B, T, tags)

    def word_tags(self, logits: torch.Tensor, batch) -> list[list[str]]:
        predictions = logits.argmax(-1).tolist()
        out = []
        for preds, word_ids, n in zip(predictions, batch["word_ids"], batch["num_words"]):
            words = word_predictions(word_ids, preds[: len(word_ids)], n)
            out.append([self.labels[p] if p >= 0 else "O" for p in words])
        return out

    def step(self, split, batch):
        logits = self(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        self.log_loss(split, loss, len(batch["ids"]))
        if split != "train":
            self.entity_f1[f"{split}_"].update(self.word_tags(logits, batch), batch["tags"])
        return loss

    def epoch_end(self, split):
        metric = self.entity_f1[f"{split}_"]
        self.log_dict({f"{split}/{k}": v for k, v in metric.compute().items()}, prog_bar=split == "val")
        metric.reset()

    def predict_step(self, batch, batch_idx):
        for i, example_id, tags in zip(batch["index"].tolist(), batch["ids"], self.word_tags(self(batch), batch)):
            self._predictions.append({"index": i, "id": example_id, "tags": tags})
