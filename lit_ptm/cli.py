"""`lit-ptm fit|validate|test|predict`: a LightningCLI driven by YAML configs."""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from lit_ptm.callbacks import RunCheckpoint
from lit_ptm.data import PretrainDataModule
from lit_ptm.objectives import PretrainObjective


class LitPtmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        objective = config.model.class_path.rsplit(".", 1)[-1].lower()
        if trainer.default_root_dir is None:
            trainer.default_root_dir = f"checkpoints/{objective}"
        root = trainer.default_root_dir
        if trainer.logger is None or trainer.logger is True:
            # Events, the resolved config.yaml and the checkpoints all live in the run directory itself.
            trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": root, "name": "", "version": "", "default_hp_metric": False},
            }


def main(args: list[str] | None = None, run: bool = True) -> LitPtmCLI:
    # The run directory deliberately holds config.yaml and tokenizer.json beside the checkpoints.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    return LitPtmCLI(
        PretrainObjective,
        PretrainDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        parser_kwargs={"default_env": False},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
