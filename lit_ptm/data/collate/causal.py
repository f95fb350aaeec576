from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, document_positions
from lit_ptm.tokenizer import SpecialIds


class CausalLMCollator:
    """Next-token prediction: windows of L + 1 tokens become inputs [B, L] and labels [B, L].

    With ``isolate_documents`` each token attends only within its own document and position ids
    restart at each document (``document_ids`` / ``position_ids`` in the batch).
    """

    def __init__(self, ids: SpecialIds, isolate_documents: bool = True):
        self.ids, self.isolate_documents = ids, isolate_documents

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_windows(samples, "ids", self.ids.pad)
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        real = torch.arange(ids.size(1)) < lengths[:, None]
        labels = ids[:, 1:].masked_fill(~real[:, 1:], -100)
        # num_tokens: a plain int, so that logging throughput never waits on the device.
        batch = {"input_ids": ids[:, :-1], "labels": labels, "num_tokens": int(lengths.sum()) - len(samples)}
        if not real.all():
            batch["attention_mask"] = real[:, :-1]
        if self.isolate_documents:
            documents = pad_windows(samples, "document", -1)[:, :-1]
            if (documents != documents[:, :1]).any():
                batch["document_ids"] = documents
                batch["position_ids"] = document_positions(documents)
        return batch
