"""`lit-ptm fit|validate|test|predict`: a LightningCLI driven by YAML configs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from lit_ptm.callbacks import CheckpointMismatchError, RunCheckpoint, read_checkpoint
from lit_ptm.pretrained import tokenizer_of


class LitPtmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")

    def _parse_ckpt_path(self) -> None:
        """Put the checkpoint's hyper-parameters into the config (as LightningCLI does), after checking it.

        A damaged file, or one of another objective (whose class LightningCLI would otherwise silently
        put in place of the configured one), stops here with its reason. A checkpoint of a module
        built in Python has no recorded class path: it is the configured objective's.
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        checkpoint = read_checkpoint(path, mmap=True, weights_only=True, map_location="cpu")
        meta = checkpoint.get("lit_ptm", {})
        configured = self.config[subcommand].model.class_path
        if meta.get("objective") not in (None, configured.rsplit(".", 1)[-1]):
            raise CheckpointMismatchError(
                f"checkpoint {path} holds a {meta['objective']} model, but this run's objective is "
                f"{configured.rsplit('.', 1)[-1]} (choose the matching --config, or start a new run from its weights)"
            )
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        class_path = hparams.pop("_class_path", configured)
        try:
            self.config = self.parser.parse_object(
                {subcommand: {"model": {"class_path": class_path, "init_args": hparams}}}, self.config
            )
        except SystemExit:
            sys.stderr.write(f"the hyper-parameters of checkpoint {path} do not parse as this run's model config\n")
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.default_root_dir is None:
            # checkpoints/<run>: the first config file's name (bert.yaml -> bert), else the objective's.
            files = config.get("config") or []
            run = Path(str(files[0])).stem if files else config.model.class_path.rsplit(".", 1)[-1].lower()
            trainer.default_root_dir = f"checkpoints/{run}"
        root = trainer.default_root_dir
        # Resuming, testing or predicting from a checkpoint, or starting from a pretrained run: the
        # tokenizer.json of that run (the checkpoint's directory), unless the user names one.
        data_args = config.data.get("init_args") if config.get("data") else None
        if data_args is not None and "tokenizer" in data_args and data_args.tokenizer is None:
            pretrained = config.model.init_args.get("pretrained") if config.model.get("init_args") else None
            for source in (config.get("ckpt_path"), pretrained):
                if source and Path(source).exists() and (tokenizer := tokenizer_of(source)) is not None:
                    data_args.tokenizer = str(tokenizer)
                    break
        if trainer.logger is None or trainer.logger is True:
            # Events, the resolved config.yaml and the checkpoints all live in the run directory itself.
            trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": root, "name": "", "version": "", "default_hp_metric": False},
            }


def run_cli(args: list[str] | None = None, run: bool = True) -> LitPtmCLI:
    """Build (and by default run) the CLI; returns it, with its trainer, model and datamodule."""
    # The run directory deliberately holds config.yaml and tokenizer.json beside the checkpoints.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # fp32 runs on GPUs use TF32 tensor cores for matmuls (as litgpt does); no effect on CPU or under bf16 autocast.
    torch.set_float32_matmul_precision("high")
    return LitPtmCLI(
        L.LightningModule,  # any objective (lit_ptm.objectives) or fine-tuning task (lit_ptm.tasks)
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        parser_kwargs={"default_env": False},
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point (`lit-ptm`, `python -m lit_ptm`): returns nothing, so the exit status is 0."""
    run_cli()  # LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
