"""Extractive question answering (SQuAD-style): start/end logits over context tokens, long contexts in
overlapping windows, answers scored by exact match and F1 (torchmetrics' SQuAD)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics.text import SQuAD

from lit_ptm.data.collate.common import pad_windows
from lit_ptm.data.corpus import CorpusError
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.tasks.base import FINETUNE_OPTIM, FinetuneTask
from lit_ptm.tasks.features import best_span, qa_windows
from lit_ptm.tasks.records import field


class ExtractiveQA(FinetuneTask):
    """Answer = a span of the context. Input windows are ``[CLS] question [SEP] context-piece [SEP]``,
    sliding over a long context with ``data.stride`` tokens of overlap; a window that does not hold the
    (first) answer whole is trained to point at [CLS]. At evaluation each example's answer is the
    best-scoring span (start + end logit, at most ``max_answer_tokens``) over all its windows,
    mapped back to the context's characters. Metrics: exact match and F1 in percent.
    """

    def __init__(
        self, pretrained: str | None = None, config: ModelConfig = ModelConfig(), optim: OptimConfig = FINETUNE_OPTIM,
        layer_decay: float = 1.0, freeze_embeddings: bool = False, predictions_file: str | None = None,
        from_scratch: bool = False, causal: bool | None = None,
        max_answer_tokens: int = 30, max_question_tokens: int = 64,
    ):
        super().__init__(pretrained, config, optim, layer_decay, freeze_embeddings, predictions_file, from_scratch, causal)
        self.max_answer_tokens, self.max_question_tokens = max_answer_tokens, max_question_tokens
        self._best: dict[int, tuple[float, str]] = {}

    def build_head(self, pretrained_state):
        self.head = nn.Linear(self.config.hidden_size, 2)
        nn.init.normal_(self.head.weight, std=self.config.init_std)
        nn.init.zeros_(self.head.bias)
        self.squad = nn.ModuleDict({"val_": SQuAD(), "test_": SQuAD()})

    special_roles = ("cls", "sep")  # [CLS] question [SEP] context [SEP], for causal models too

    def text_fields(self, data) -> tuple[str, ...]:
        return (data.question_field, data.context_field)

    def build_features(self, records, split, data):
        path = data.file(split)
        features = []
        for k, r in enumerate(records):
            question, context = field(r, data.question_field, path, str), field(r, data.context_field, path, str)
            answer = None
            if split != "predict":
                answers = field(r, data.answers_field, path, dict)
                texts, starts = answers.get("text") or [], answers.get("answer_start") or []
                if not texts or len(texts) != len(starts):
                    raise CorpusError(f"{path}:{r['_line']}: {data.answers_field} needs lists 'text' and 'answer_start' of one length")
                start = int(starts[0])
                if context[start : start + len(texts[0])] != texts[0]:
                    raise CorpusError(f"{path}:{r['_line']}: answer {texts[0]!r} is not at character {start} of the context")
                answer = (start, start + len(texts[0]))
            for window in qa_windows(data.tokenizer, question, context, data.max_length, data.stride, k, answer,
                                     self.max_question_tokens):
                features.append({"ids": torch.tensor(window.ids), "token_type": torch.tensor(window.token_type),
                                 "offsets": window.offsets, "example": k, "start": window.start, "end": window.end})
        return features

    def collate(self, samples):
        ids = pad_windows(samples, "ids", self.trainer.datamodule.tokenizer.ids.pad)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        batch = {"input_ids": ids, "lengths": lengths, "offsets": [s["offsets"] for s in samples],
                 "example": [s["example"] for s in samples], "start": torch.tensor([s["start"] for s in samples]),
                 "end": torch.tensor([s["end"] for s in samples])}
        real = torch.arange(ids.size(1)) < lengths[:, None]
        if not real.all():
            batch["attention_mask"] = real
        if self.config.reads_token_types:  # not type_vocab_size: XLNet reads them without a table
            batch["token_type_ids"] = pad_windows(samples, "token_type", 0)
        return batch

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encode(batch)).float()  # (B, T, 2)
        # Only context tokens and [CLS] (position 0, "not in this window") can be answers.
        allowed = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        for b, offsets in enumerate(batch["offsets"]):
            allowed[b, [0] + [i for i, o in enumerate(offsets) if o is not None]] = True
        logits = logits.masked_fill(~allowed[..., None], -1e4)
        return logits[..., 0], logits[..., 1]

    def _loss(self, start_logits, end_logits, batch):
        return (F.cross_entropy(start_logits, batch["start"]) + F.cross_entropy(end_logits, batch["end"])) / 2

    def step(self, split, batch):
        start_logits, end_logits = self(batch)
        loss = self._loss(start_logits, end_logits, batch)
        self.log_loss(split, loss, len(batch["example"]))
        if split != "train":
            self._collect(batch, start_logits, end_logits, split)
        return loss

    def _collect(self, batch, start_logits, end_logits, split):
        """Keep, per example, the best span over the windows seen so far: (score, answer text)."""
        records = self.trainer.datamodule.records[split]
        for b, (example, offsets) in enumerate(zip(batch["example"], batch["offsets"])):
            score, first, last = best_span(start_logits[b].cpu(), end_logits[b].cpu(), offsets, self.max_answer_tokens)
            if score == float("-inf"):
                continue
            text = records[example][self.trainer.datamodule.context_field][offsets[first][0] : offsets[last][1]]
            if example not in self._best or score > self._best[example][0]:
                self._best[example] = (score, text)

    def _gathered_best(self) -> dict[int, tuple[float, str]]:
        """Windows of one example may sit on different ranks: merge every rank's best spans."""
        best = self._best
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, best)
            best = {}
            for part in parts:
                for k, v in part.items():
                    if k not in best or v[0] > best[k][0]:
                        best[k] = v
        return best

    def epoch_end(self, split):
        data = self.trainer.datamodule
        records, best = data.records[split], self._gathered_best()
        preds, targets = [], []
        for k, r in enumerate(records):
            answers = r[data.answers_field]
            preds.append({"prediction_text": best.get(k, (0.0, ""))[1], "id": str(k)})
            targets.append({"answers": {"text": list(answers["text"]), "answer_start": list(answers["answer_start"])}, "id": str(k)})
        scores = self.squad[f"{split}_"](preds, targets)
        self.log(f"{split}/exact_match", scores["exact_match"], prog_bar=split == "val", rank_zero_only=True)
        self.log(f"{split}/f1", scores["f1"], prog_bar=split == "val", rank_zero_only=True)
        self.squad[f"{split}_"].reset()
        self._best = {}

    def on_predict_epoch_start(self):
        super().on_predict_epoch_start()
        self._best = {}

    def predict_step(self, batch, batch_idx):
        self._collect(batch, *self(batch), "predict")

    def on_predict_epoch_end(self):
        data = self.trainer.datamodule
        best = self._gathered_best()
        self._predictions = [
            {"index": k, "id": r.get(data.id_field, r["_line"]), "prediction": best.get(k, (0.0, ""))[1],
             "score": round(best[k][0], 4) if k in best else None}
            for k, r in enumerate(data.records["predict"])
        ] if self.trainer.is_global_zero else []
        if self.trainer.is_global_zero:
            super().on_predict_epoch_end()
