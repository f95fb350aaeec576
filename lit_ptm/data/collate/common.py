from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, index) (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (index + 1) * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


def sample_noise(samples: list[dict], seed: int, rows: int, length: int) -> torch.Tensor:
    """Uniform noise [B, rows, length]: sample b's block is drawn from its own generator at the
    sample's own length (padding gets 1.0), so it does not depend on what else is in the batch."""
    g = torch.Generator()
    out = torch.ones(len(samples), rows, length)
    for b, s in enumerate(samples):
        g.manual_seed(sample_seed(seed, s["epoch"], s["index"]))
        out[b, :, : len(s["ids"])] = torch.rand(rows, len(s["ids"]), generator=g)
    return out


def pad_windows(samples: list[dict], key: str, value: int, length: int | None = None) -> torch.Tensor:
    """Stack the 1-D tensors ``samples[i][key]`` into [B, L], right-padded with ``value``."""
    length = length or max(len(s[key]) for s in samples)
    out = torch.full((len(samples), length), value, dtype=samples[0][key].dtype)
    for b, s in enumerate(samples):
        out[b, : len(s[key])] = s[key]
    return out


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 where a new document starts in a packed window. [B, L] -> [B, L]"""
    arange = torch.arange(documents.size(1)).expand_as(documents)
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    return arange - torch.where(starts, arange, 0).cummax(dim=1).values


def padding_keys(lengths: torch.Tensor, width: int, key: str = "attention_mask") -> dict[str, torch.Tensor]:
    """``{key: [B, width] bool}``, True on each row's first ``lengths`` tokens, or {} when no row is
    padded (attention then needs no mask: the fast path)."""
    real = torch.arange(width) < lengths[:, None]
    return {} if real.all() else {key: real}


def window_keys(samples: list[dict], width: int, isolate_documents: bool) -> dict[str, torch.Tensor]:
    """The attention keys of windows laid out as they come (padded to ``width``): ``attention_mask``
    when a row is padded; with ``isolate_documents``, ``document_ids`` and ``position_ids`` (restarting
    per document) when a row packs several documents."""
    lengths = torch.tensor([len(s["ids"]) for s in samples])
    keys = padding_keys(lengths, width)
    if isolate_documents:
        documents = pad_windows(samples, "document", -1, width)
        if (documents.masked_fill(documents < 0, 0) != 0).any():
            keys["document_ids"] = documents
            keys["position_ids"] = document_positions(documents)
    return keys
