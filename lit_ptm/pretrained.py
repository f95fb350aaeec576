"""Starting a new run from a pretrained one: continued pretraining and fine-tuning.

A pretrained run is a run directory (``checkpoints/bert``: its ``last.ckpt``) or a checkpoint file.
What it gives: the model config, the weights of the backbone (the stack a fine-tuning head or a
new objective sits on), the full state dict (heads included) and the tokenizer the run trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_ptm.callbacks import CheckpointError, CheckpointMismatchError, read_checkpoint
from lit_ptm.nn import ModelConfig
from lit_ptm.nn.stack import upgrade_state_dict


@dataclass
class Pretrained:
    checkpoint: Path
    objective: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # the whole module's weights, heads included
    backbone: str  # the name of the objective's stack that others take, e.g. "transformer"
    tokenizer_sha: str | None
    causal: bool = False  # how the backbone was trained to read (GPT: causally)
    decoder_start: str | None = None  # an encoder-decoder's decoder start role, as its checkpoint records it

    def backbone_state(self) -> dict[str, torch.Tensor]:
        prefix = self.backbone + "."
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    @property
    def tokenizer_file(self) -> Path | None:
        return tokenizer_of(self.checkpoint)


def checkpoint_of(path: str | Path, key: str = "model.pretrained") -> Path:
    """A run directory's last.ckpt (else its best.ckpt), or the file itself; ``key`` names the flag in errors."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.ckpt", "best.ckpt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{key}={path} is a directory without last.ckpt or best.ckpt")
    if not path.is_file():
        raise CheckpointError(f"{key}={path} does not exist (give a run directory or a .ckpt file)")
    return path


def tokenizer_of(path: str | Path) -> Path | None:
    """The tokenizer.json beside a pretrained run's checkpoint (or in an HF model directory), if there is one."""
    from lit_ptm.hf import is_hf_dir

    candidate = (Path(path) if is_hf_dir(path) else checkpoint_of(path).parent) / "tokenizer.json"
    return candidate if candidate.is_file() else None


def read_run(path: str | Path, key: str = "model.pretrained") -> tuple[Path, dict, ModelConfig]:
    """A lit_ptm run's checkpoint (its directory or the file), read safely: the file, its content, its model config."""
    checkpoint = checkpoint_of(path, key)
    raw = read_checkpoint(checkpoint)
    meta = raw.get("lit_ptm")
    if meta is None:
        raise CheckpointMismatchError(f"{key}={checkpoint} was not written by lit_ptm (no 'lit_ptm' entry)")
    if isinstance(raw.get("state_dict"), dict):
        upgrade_state_dict(raw["state_dict"])
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return checkpoint, raw, ModelConfig(**{k: v for k, v in meta["model_config"].items() if k in fields})


def reads_causally(meta: dict) -> bool:
    """How a checkpoint's backbone reads, from its ``lit_ptm`` entry (older checkpoints kept it in the model config)."""
    return bool(meta.get("causal", meta["model_config"].get("causal", False)))


def load_pretrained(path: str | Path) -> Pretrained:
    """A lit_ptm run (directory or .ckpt) or a local HF model directory (BERT, RoBERTa, ALBERT, GPT-2, XLNet, MPNet; T5 and BART,
    whose backbone is their encoder)."""
    from lit_ptm.hf import is_hf_dir, read_hf_dir

    if is_hf_dir(path):
        hf = read_hf_dir(path)
        return Pretrained(checkpoint=hf.directory, objective=hf.objective, config=hf.config, state_dict=hf.state_dict,
                          backbone=hf.backbone, tokenizer_sha=hf.tokenizer.sha, causal=hf.objective == "CausalLM")
    checkpoint, raw, config = read_run(path)
    meta = raw["lit_ptm"]
    return Pretrained(
        checkpoint=checkpoint, objective=meta["objective"], config=config, state_dict=raw["state_dict"],
        backbone=meta.get("backbone", "transformer"), tokenizer_sha=meta.get("tokenizer_sha"),
        causal=reads_causally(meta), decoder_start=meta.get("decoder_start"),
    )


def check_tokenizer(pretrained: Pretrained, tokenizer) -> None:
    """The data's tokenizer must be the one the pretrained model learned its embeddings with."""
    if tokenizer is None:
        return
    if tokenizer.vocab_size != pretrained.config.vocab_size or pretrained.tokenizer_sha not in (None, tokenizer.sha):
        raise CheckpointMismatchError(
            f"model.pretrained={pretrained.checkpoint} was trained with another tokenizer (vocabulary "
            f"{pretrained.config.vocab_size}, sha {pretrained.tokenizer_sha}) than this run's {tokenizer.source} "
            f"(vocabulary {tokenizer.vocab_size}, sha {tokenizer.sha}); leave data.tokenizer unset to use the "
            f"run's own tokenizer.json{f' ({pretrained.tokenizer_file})' if pretrained.tokenizer_file else ''}"
        )
