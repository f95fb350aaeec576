"""Sequence (pair) classification and regression, GLUE-style."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef

from lit_ptm.data.collate.common import pad_windows
from lit_ptm.data.corpus import CorpusError
from lit_ptm.errors import ConfigError
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.tasks.base import FINETUNE_OPTIM, FinetuneTask
from lit_ptm.tasks.features import encode_texts
from lit_ptm.tasks.records import field, label_order, label_text, number


class PooledHead(nn.Module):
    """dropout -> dense + tanh (BERT's pooler) -> dropout -> linear, on the pooled state (B, H) -> (B, n)."""

    def __init__(self, hidden: int, outputs: int, dropout: float, init_std: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, outputs)
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


class SequenceClassification(FinetuneTask):
    """One label (or one number, with ``regression``) per text or text pair.

    Pooling: [CLS] for encoders, the last token for causal models. The label set is read from the
    training file and kept in the checkpoint, so ``test`` and ``predict`` map back to names. Labels are
    strings or integers, kept as strings (``1`` and ``"1"`` are one class; integers sort numerically).
    Metrics: accuracy, macro F1 and Matthews correlation; for regression Pearson, Spearman and MSE.
    The head starts fresh, as RoBERTa's and ELECTRA's do; ``pooler_from_pretrained: true`` takes
    the dense layer from a BERT pooler pretrained with NSP/SOP instead (as HF's
    BertForSequenceClassification does), which helps only where that pooler learnt something.
    ``pooling: mean`` averages the real tokens' states instead of reading [CLS] / the last token (demo
    task, tiny BERT pretrained 3,000 steps, all examples: 0.78 with mean pooling vs 0.77 with [CLS],
    the mean of three seeds: no worse, within the seeds' spread).
    """

    def __init__(
        self, pretrained: str | None = None, config: ModelConfig = ModelConfig(), optim: OptimConfig = FINETUNE_OPTIM,
        layer_decay: float = 1.0, freeze_embeddings: bool = False, predictions_file: str | None = None,
        from_scratch: bool = False, causal: bool | None = None,
        labels: list[str] | None = None, regression: bool = False, classifier_dropout: float = 0.1,
        pooler_from_pretrained: bool = False, pooling: str = "auto",
    ):
        super().__init__(pretrained, config, optim, layer_decay, freeze_embeddings, predictions_file, from_scratch, causal)
        self.labels, self.regression, self.classifier_dropout = labels, regression, classifier_dropout
        self.pooler_from_pretrained = pooler_from_pretrained
        if pooling not in ("auto", "mean"):
            raise ConfigError(f"model.pooling={pooling!r} is not one of auto, mean")
        self.pooling = pooling

    @property
    def labels_known(self) -> bool:
        return self.regression or self.labels is not None

    def build_head(self, pretrained_state):
        outputs = 1 if self.regression else len(self.labels)
        self.head = PooledHead(self.config.hidden_size, outputs, self.classifier_dropout, self.config.init_std)
        if self.pooler_from_pretrained and "pair_head.pooler.weight" in pretrained_state:
            self.head.dense.load_state_dict({"weight": pretrained_state["pair_head.pooler.weight"],
                                             "bias": pretrained_state["pair_head.pooler.bias"]})
        if self.regression:
            make = lambda: MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()})  # noqa: E731
        else:
            n = len(self.labels)
            make = lambda: MetricCollection({  # noqa: E731
                "acc": MulticlassAccuracy(n, average="micro"), "f1": MulticlassF1Score(n, average="macro"),
                "mcc": MulticlassMatthewsCorrCoef(n),
            })
        self.metrics = nn.ModuleDict({split: make() for split in ("val_", "test_")})  # training logs its loss only

    # -- data -----------------------------------------------------------------------------------
    def text_fields(self, data) -> tuple[str, ...]:
        return (data.text_field, data.text_pair_field) if data.text_pair_field else (data.text_field,)

    def build_features(self, records, split, data):
        path = data.file(split)
        label = lambda r: label_text(field(r, data.label_field, path), path, r["_line"], data.label_field)  # noqa: E731
        if split == "train" and not self.labels_known:
            # From the whole training file, also when data.train_examples fine-tunes on a subset of it.
            self.labels = sorted({label(r) for r in data.records[split]}, key=label_order)
            if len(self.labels) < 2:
                raise CorpusError(f"{path}: field {data.label_field!r} has {len(self.labels)} distinct value(s); a classifier needs two")
            self.hparams["labels"] = self.labels
        texts = [field(r, data.text_field, path, str) for r in records]
        pairs = [field(r, data.text_pair_field, path, str) for r in records] if data.text_pair_field else None
        features = encode_texts(data.tokenizer, texts, pairs, data.max_length, self.reads_causally())
        index = {name: i for i, name in enumerate(self.labels or [])}
        for f, r in zip(features, records):
            f["ids"], f["token_type"] = torch.tensor(f["ids"]), torch.tensor(f["token_type"])
            f["id"] = r.get(data.id_field, r["_line"])
            if split == "predict" and r.get(data.label_field) is None:
                continue
            if self.regression:
                f["label"] = number(field(r, data.label_field, path), path, r["_line"], data.label_field)
            elif (name := label(r)) in index:
                f["label"] = index[name]
            else:
                raise CorpusError(f"{path}:{r['_line']}: label {name!r} is not among the training labels {self.labels}")
        return features

    def collate(self, samples):
        ids = pad_windows(samples, "ids", self.trainer.datamodule.tokenizer.ids.pad)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        batch = {"input_ids": ids, "lengths": lengths, "index": torch.tensor([s["index"] for s in samples]),
                 "ids": [s["id"] for s in samples]}
        real = torch.arange(ids.size(1)) < lengths[:, None]
        if not real.all():
            batch["attention_mask"] = real
        if self.config.reads_token_types:  # not type_vocab_size: XLNet reads them without a table
            batch["token_type_ids"] = pad_windows(samples, "token_type", 0)
        if all("label" in s for s in samples):
            batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.float if self.regression else torch.long)
        return batch

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, batch) -> torch.Tensor:
        logits = self.head(self.pool(self.encode(batch), batch)).float()  # (B, n)
        return logits.squeeze(-1) if self.regression else logits

    def step(self, split: str, batch):
        logits = self(batch)
        labels = batch["labels"]
        loss = F.mse_loss(logits, labels) if self.regression else F.cross_entropy(logits, labels)
        self.log_loss(split, loss, len(labels))
        if split != "train":
            metrics = self.metrics[f"{split}_"]
            metrics.update(logits.detach() if self.regression else logits.detach().argmax(-1), labels)
            self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, on_epoch=True, prog_bar=split == "val")
        return loss

    def predict_step(self, batch, batch_idx):
        logits = self(batch)
        if self.regression:
            values = logits.tolist()
        else:
            probs = logits.softmax(-1)
            values = [self.labels[i] for i in probs.argmax(-1).tolist()]
            scores = probs.max(-1).values.tolist()
        for k, (i, example_id) in enumerate(zip(batch["index"].tolist(), batch["ids"])):
            row = {"index": i, "id": example_id, "prediction": values[k]}
            if not self.regression:
                row["score"] = round(scores[k], 6)
            self._predictions.append(row)
