"""`lit-ptm fit|validate|test|predict`: a LightningCLI driven by YAML configs."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_ptm.callbacks import CheckpointError, CheckpointMismatchError, RunCheckpoint, read_checkpoint
from lit_ptm.errors import ConfigError, LitPtmError
from lit_ptm.hf import check_hf_dir, is_hf_dir
from lit_ptm.nn.config import LEGACY_KEYS
from lit_ptm.pretrained import checkpoint_of, tokenizer_of
from lit_ptm.rundir import RunLock, is_global_rank_zero, take_run_directory

# Model settings that may change when a run resumes: the new value applies (with a warning). Every
# other setting of the model must agree with the checkpoint: it was built with it.
RESUMABLE = ("optim.", "config.dropout", "config.attention_dropout", "classifier_dropout", "predictions_file", "max_answer_tokens",
             "compile", "num_beams", "max_new_tokens", "length_penalty")
# Build-time settings a resume ignores: the weights come from the checkpoint.
IGNORED_ON_RESUME = ("pretrained", "from_scratch", "causal")
# Run-level settings not worth a warning when they change between a run and its resume.
UNREPORTED = ("ckpt_path", "config", "overwrite", "trainer.logger", "trainer.callbacks", "trainer.enable_progress_bar",
              "trainer.enable_model_summary", "trainer.default_root_dir", "data.init_args.tokenizer")
# Data settings a resume cannot change: the run's tokenizer.json is used, whatever they say.
TOKENIZER_SETTINGS = ("data.init_args.tokenizer_kind", "data.init_args.vocab_size", "data.init_args.lowercase")


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts / Namespaces as {"a.b.c": leaf}; tuples as lists, so YAML and Python values compare."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def signature_defaults(class_path: str) -> dict:
    """The flattened defaults of a module's __init__ arguments (what a config that says nothing gives)."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    defaults = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.default is not inspect.Parameter.empty:
            defaults.update(flatten({p.name: p.default}))
    return defaults


def upgrade_hyperparameters(hparams: dict, class_path: str) -> None:
    """An older checkpoint's hyper-parameters as today's classes take them (in place): ModelConfig's
    ``causal`` flag left the config (causality belongs to the objective); a fine-tuning task records
    how its backbone reads as its own ``causal`` argument. A run from before ``optim.embedding_lr_scale``
    trained its token table at lr (its optimizer state has no group of the table's own): it resumes so."""
    optim = hparams.get("optim")
    if isinstance(optim, dict) and "embedding_lr_scale" not in optim:
        optim["embedding_lr_scale"] = 1.0
    config = hparams.get("config")
    if not isinstance(config, dict):
        return
    legacy = {key: config.pop(key) for key in LEGACY_KEYS if key in config}
    if "causal" in legacy and class_path.startswith("lit_ptm.tasks.") and hparams.get("causal") is None:
        hparams["causal"] = bool(legacy["causal"])


def resume_settings(path, configured: dict, saved: dict, defaults: dict, explicit: set[str] = frozenset()) -> tuple[dict, list[str]]:
    """The model settings a resume runs with: the checkpoint's, except the resumable ones the user changed.

    A setting counts as given by the user when a config file or flag sets it (``explicit``) or it differs
    from its signature default (a recipe that does not mention a setting does not contradict the
    checkpoint). A given setting that the model was built differently with stops the run, naming each
    key and both values.
    """
    saved_flat, conflicts, changed = flatten(saved), [], []
    pretrained_given = configured.get("pretrained") is not None
    for key, ours in configured.items():
        if key not in saved_flat or key.startswith("_") or ours is None:
            continue
        if ours == defaults.get(key, object()) and key not in explicit:
            continue
        theirs = saved_flat[key]
        if ours == theirs or key.startswith(IGNORED_ON_RESUME) or (pretrained_given and key.startswith("config.")):
            continue
        if key.startswith(RESUMABLE):
            saved_flat[key] = ours
            changed.append(f"model.{key}: {theirs!r} -> {ours!r}")
        else:
            conflicts.append(f"model.{key}={ours!r} (the checkpoint's: {theirs!r})")
    if conflicts:
        raise CheckpointMismatchError(
            f"checkpoint {path} was built with other settings than this run gives: {'; '.join(conflicts)}. A resumed "
            f"model keeps its architecture and objective; drop these flags, or start a new run from the checkpoint's "
            f"weights with --model.pretrained (settings that may change on resume: {', '.join(RESUMABLE)}, trainer.*)"
        )
    merged: dict = {}
    for key, value in saved_flat.items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged, changed


def changed_run_settings(old_config: Path, new: dict) -> list[str]:
    """Trainer and data settings that differ from the run's previous config.yaml (reported, then applied)."""
    try:
        old = flatten(yaml.safe_load(old_config.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return []
    changes = []
    for key, value in flatten(new).items():
        if key.startswith(("trainer.", "data.", "seed_everything")) and key not in UNREPORTED and key in old:
            if str(old[key]) != str(value):
                ignored = " (ignored: the run's tokenizer.json is used)" if key in TOKENIZER_SETTINGS else ""
                changes.append(f"{key}: {old[key]!r} -> {value!r}{ignored}")
    return changes


class FitConfigCallback(SaveConfigCallback):
    """The run's config.yaml is the config it was trained with: `test`, `validate` and `predict` leave it alone."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class LitPtmParser(LightningArgumentParser):
    """A config error is one message and a pointer to --help, not a usage block of every option first."""

    def print_usage(self, file=None) -> None:
        if file is not sys.stderr:  # jsonargparse's error() prints the usage to stderr, then the tip and the error
            super().print_usage(file)


class LitPtmCLI(LightningCLI):
    held_lock: RunLock | None = None  # the run directory's lock, while a run holds it

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="fit: start over in a run directory that holds a run, removing its checkpoints, config.yaml, "
                 "tokenizer.json and events first (without it, such a directory is refused)",
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check that every ``--model.*`` / ``--data.*`` option named an existing key exactly.
        The subcommand parsers refuse abbreviations (allow_abbrev=False), but jsonargparse parses the
        arguments of a class chosen by class_path with a parser of its own, which would still take
        ``--model.init_args.config.hidden 32`` for ``hidden_size``."""
        super().parse_arguments(parser, args)
        argv = sys.argv[1:] if args is None else args
        subcommand = self.config.get("subcommand")
        if isinstance(argv, (dict, Namespace)) or not subcommand:
            return
        keys = set(flatten(self.config[subcommand]))
        self._explicit_model_keys = self._given_model_keys(parser, argv, subcommand)
        for item in argv:
            if not isinstance(item, str) or not item.startswith(("--model.", "--data.")):
                continue
            key = item[2:].split("=", 1)[0].rstrip("+")
            group, _, rest = key.partition(".")
            if rest.split(".")[0] not in ("init_args", "class_path", "dict_kwargs"):
                key = f"{group}.init_args.{rest}"  # --data.batch_size is short for --data.init_args.batch_size
            if key not in keys and not any(k.startswith(key + ".") for k in keys):
                close = sorted(k for k in keys if k.startswith(key))[:3]
                raise ConfigError(
                    f"unknown config key {item.split('=', 1)[0]} (keys are never matched by prefix"
                    + (f"; did you mean {', '.join('--' + k for k in close)}?)" if close else ")")
                )

    @staticmethod
    def _given_model_keys(parser, argv: list, subcommand: str) -> set[str]:
        """The model's init_args keys that the config files and flags set (whatever their value): a parse
        without defaults. A resume compares these with the checkpoint (see resume_settings)."""
        try:
            given = parser.parse_args(argv, defaults=False)[subcommand]
        except (SystemExit, Exception):  # it parsed with defaults a moment ago; without them nothing more is needed
            return set()
        model = given.get("model")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        return set(flatten(init_args)) if init_args else set()

    def _parse_ckpt_path(self) -> None:
        """Put the checkpoint's hyper-parameters into the config (as LightningCLI does), after checking it.

        LightningCLI calls this private hook before instantiating the classes; overriding it is the one
        way to check a checkpoint before its hyper-parameters replace the user's
        (tests/test_cli.py::test_lightning_still_calls_the_checkpoint_hook guards the assumption).
        A damaged or unsafe file, one of another objective, or one whose architecture contradicts the
        given flags stops here with its reason. Settings that may change on resume take the new value.
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        if path in ("last", "best", "hpc") or str(path) == "registry" or str(path).startswith("registry:"):
            # Lightning would resolve these itself, past lit_ptm's safe read of the file: name the file instead.
            raise CheckpointError(f"--ckpt_path {path}: give the checkpoint file or run directory (e.g. checkpoints/bert/last.ckpt)")
        if Path(path).is_dir():  # a run directory: its last.ckpt
            path = str(checkpoint_of(path, key="ckpt_path"))
            self.config[subcommand].ckpt_path = path
        checkpoint = read_checkpoint(path, mmap=True)
        meta = checkpoint.get("lit_ptm", {})
        if subcommand == "fit" and "optimizer_states" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {path} holds weights only (imported, or saved without its training state): nothing to resume; "
                f"start a run from its weights with --model.pretrained {Path(path).parent if meta.get('weights_only') else path}"
            )
        configured = self.config[subcommand].model.class_path
        if meta.get("objective") not in (None, configured.rsplit(".", 1)[-1]):
            raise CheckpointMismatchError(
                f"checkpoint {path} holds a {meta['objective']} model, but this run's objective is "
                f"{configured.rsplit('.', 1)[-1]} (choose the matching --config, or start a new run from its weights)"
            )
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        self._resume_changes = []
        if not hparams:
            return
        class_path = hparams.pop("_class_path", configured)
        if class_path != configured and not class_path.startswith(("lit_ptm.objectives.", "lit_ptm.tasks.")):
            # Plain data, but importing a module by name runs its code: only lit_ptm's own classes.
            raise CheckpointError(f"checkpoint {path} names the class {class_path!r}, which is not a lit_ptm objective or task")
        upgrade_hyperparameters(hparams, class_path)
        given = flatten(self.config[subcommand].model.get("init_args") or {})
        init_args, self._resume_changes = resume_settings(
            path, given, hparams, signature_defaults(class_path), getattr(self, "_explicit_model_keys", set())
        )
        try:
            self.config = self.parser.parse_object(
                {subcommand: {"model": {"class_path": class_path, "init_args": init_args}}}, self.config
            )
        except SystemExit:
            sys.stderr.write(f"the hyper-parameters of checkpoint {path} do not parse as this run's model config\n")
            raise

    def before_instantiate_classes(self) -> None:
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        trainer = config.trainer
        if trainer.default_root_dir is None:
            # checkpoints/<run>: the first config file's name (bert.yaml -> bert), else the objective's.
            files = config.get("config") or []
            run = Path(str(files[0])).stem if files else config.model.class_path.rsplit(".", 1)[-1].lower()
            trainer.default_root_dir = f"checkpoints/{run}"
        root = Path(trainer.default_root_dir)
        init_args = config.model.get("init_args")
        pretrained = init_args.get("pretrained") if init_args is not None else None
        if pretrained is not None:  # a missing, damaged or unsafe run is named before anything is built
            if is_hf_dir(pretrained):
                check_hf_dir(pretrained)
            else:
                read_checkpoint(checkpoint_of(pretrained), mmap=True)
        # Resuming, testing or predicting from a checkpoint, or starting from a pretrained run: the
        # tokenizer.json of that run (the checkpoint's directory), unless the user names one.
        data_args = config.data.get("init_args") if config.get("data") else None
        if data_args is not None and "tokenizer" in data_args and data_args.tokenizer is None:
            for source in (config.get("ckpt_path"), pretrained):
                if source and Path(source).exists() and (tokenizer := tokenizer_of(source)) is not None:
                    data_args.tokenizer = str(tokenizer)
                    break
        logger = trainer.logger
        ours = not isinstance(logger, (bool, type(None))) and str(logger.get("class_path", "")).endswith("TensorBoardLogger") \
            and logger.get("init_args", {}).get("name") == "" and logger.get("init_args", {}).get("version") == ""
        if logger is None or logger is True or ours:
            # Events, the resolved config.yaml and the checkpoints all live in the run directory itself (also when
            # a saved config.yaml, which records the logger, is reused with another run directory).
            trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root), "name": "", "version": "", "default_hp_metric": False},
            }
        if trainer.enable_progress_bar is not False and not trainer.get("callbacks"):
            trainer.callbacks = [{"class_path": "lit_ptm.callbacks.RunProgressBar"}]
        elif trainer.enable_progress_bar is not False and not any("ProgressBar" in str(c) for c in trainer.callbacks):
            trainer.callbacks = [*trainer.callbacks, {"class_path": "lit_ptm.callbacks.RunProgressBar"}]
        architecture = init_args.get("config") if init_args is not None and pretrained is None else None
        length = data_args.get("seq_length") if data_args is not None else None
        if architecture is not None and length is not None and not config.get("ckpt_path"):
            positions = architecture.max_position_embeddings - (architecture.get("position_offset") or 0)
            if length > positions:  # checked again once the model is built (a checkpoint's sizes, a pretrained run's)
                raise ConfigError(f"data.seq_length={length} exceeds model.config.max_position_embeddings={positions}")
        if config.get("ckpt_path") and self.subcommand == "fit":
            changes = getattr(self, "_resume_changes", []) + changed_run_settings(
                Path(config.ckpt_path).parent / "config.yaml", {k: config[k] for k in ("trainer", "data", "seed_everything")}
            )
            if changes:
                warnings.warn(
                    f"resuming {config.ckpt_path} with changed settings (applied, and recorded in {root / 'config.yaml'}): "
                    + "; ".join(changes)
                )

    def after_instantiate_classes(self) -> None:
        """Take the run directory once every class is built, so that a config error leaves no trace in it."""
        super().after_instantiate_classes()
        if not self.subcommand or not is_global_rank_zero():  # DDP ranks, nodes and workers of this run share its lock
            return
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir)
        init_args = config.model.get("init_args")
        pretrained = init_args.get("pretrained") if init_args is not None else None
        outputs = ()
        if self.subcommand == "predict" and init_args is not None and "predictions_file" in init_args:
            path = Path(init_args.predictions_file or root / "predictions.jsonl")
            world = self.trainer.world_size  # several processes write one file each (tasks.base)
            outputs = (path,) if world == 1 else tuple(path.with_name(f"{path.stem}.rank{r}{path.suffix}") for r in range(world))
        LitPtmCLI.held_lock = take_run_directory(
            self.subcommand, root, config.get("ckpt_path"), config.overwrite, outputs, reads=(pretrained,) if pretrained else ()
        )
        config.overwrite = False  # the recorded config.yaml must not start over when it is reused


def quiet_third_party_noise() -> None:
    """Messages a lit_ptm user cannot act on: the cloud-logging tip, torch's deprecation of a private
    API that Lightning calls, and "the dataloader is not resumable" (ours resumes through the data
    module's state, tested to the batch)."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")  # num_workers is a data flag

    class DropTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())


def run_cli(args: list[str] | None = None, run: bool = True) -> LitPtmCLI:
    """Build (and by default run) the CLI; returns it, with its trainer, model and datamodule.
    The run directory's lock is released when it returns (or fails)."""
    quiet_third_party_noise()
    # fp32 runs on GPUs use TF32 tensor cores for matmuls (as litgpt does); no effect on CPU or under bf16 autocast.
    torch.set_float32_matmul_precision("high")
    try:
        cli = LitPtmCLI(
            L.LightningModule,  # any objective (lit_ptm.objectives) or fine-tuning task (lit_ptm.tasks)
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=LitPtmParser,
            save_config_callback=FitConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False},
            # No prefix matching: `--model.init_args.config.hidden 32` is an unknown key, not hidden_size.
            parser_kwargs={"prog": "lit-ptm", "default_env": False, "allow_abbrev": False,
                           **{sub: {"allow_abbrev": False} for sub in ("fit", "validate", "test", "predict")}},
            args=args,
            run=run,
        )
        return cli
    finally:
        if LitPtmCLI.held_lock is not None:  # set by after_instantiate_classes, also when the run failed
            LitPtmCLI.held_lock.release()
            LitPtmCLI.held_lock = None


def main() -> None:
    """Console entry point (`lit-ptm`, `python -m lit_ptm`). Bad input (a LitPtmError) prints one
    message and exits with status 2; LIT_PTM_DEBUG=1 shows the traceback too."""
    try:
        if sys.argv[1:2] in (["import"], ["export"]):  # plain subcommands: HF transformers interoperability
            from lit_ptm.hf import main as hf_main

            hf_main(sys.argv[1:])
        elif sys.argv[1:2] == ["generate"]:  # a plain subcommand: generate with a causal LM or an encoder-decoder run
            from lit_ptm.generate import main as generate_main

            generate_main(sys.argv[2:])
        else:
            run_cli()  # LightningCLI reads sys.argv itself
    except Exception as e:
        user_error = user_error_of(e)
        if user_error is None:
            raise  # a bug: its traceback
        if os.environ.get("LIT_PTM_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"lit-ptm: error: {user_error}", file=sys.stderr)
        sys.exit(2)


def user_error_of(error: BaseException) -> LitPtmError | None:
    """The LitPtmError behind an exception: jsonargparse wraps errors raised while it builds the classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LitPtmError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
