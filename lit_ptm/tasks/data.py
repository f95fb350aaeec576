"""FinetuneDataModule: labelled files -> the task's features -> batches (exactly resumable, like pretraining)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_ptm.data.corpus import CorpusError
from lit_ptm.data.datamodule import ResumableLoaders, default_cache_dir
from lit_ptm.data.sampling import WindowDataset
from lit_ptm.errors import ConfigError
from lit_ptm.tasks.demo import write_demo_task
from lit_ptm.tasks.records import EmptyTexts, Format, TsvQuoting, check_choice, drop_empty_texts, read_records
from lit_ptm.tokenizer import Tokenizer

SPLITS = ("train", "val", "test", "predict")


class FinetuneDataModule(ResumableLoaders, L.LightningDataModule):
    """Labelled examples for a fine-tuning task; the task module turns records into features and batches.

    Args:
        train_file, val_file, test_file, predict_file: JSONL, CSV or TSV files (``format``: auto
            from the suffix). With no train_file: the task's built-in demo task (classification and
            the other tasks: the standard-library package of a docstring; Seq2Seq: a docstring's first
            sentence from the rest of it), whose val and test files stand in for unset ones. CSV is RFC 4180 (quoted
            fields may hold commas and line breaks); every CSV/TSV row must have the header's number
            of fields. Class labels and tags are strings or integers (``1`` and ``"1"`` are one class).
        tsv_quoting: ``none`` (GLUE's TSV files): a ``"`` is an ordinary character and a field ends at
            the next tab or line break; ``csv``: TSV with CSV's quoting (a field that starts with ``"``
            runs to its closing quote, line breaks and tabs included).
        empty_texts: a record whose input text is empty or blank (classification text or pair, an
            empty word list, a QA question or context): ``fail`` names how many and where; ``skip``
            leaves them out (they get no prediction either) with a warning that counts them.
        tokenizer: the pretrained run's tokenizer.json (set from ``model.pretrained`` when unset).
        max_length: model input length, special tokens included; longer inputs are truncated
            (QA contexts are cut into overlapping windows instead).
        text_field, text_pair_field, label_field: classification fields (pair: None for single texts).
        tokens_field, tags_field: token classification (a list of words and a list of tags).
        question_field, context_field, answers_field, id_field: extractive QA (SQuAD layout:
            answers = {"text": [...], "answer_start": [...]}).
        source_field, target_field: sequence-to-sequence (``predict`` needs no target).
        stride: QA windows overlap by this many context tokens.
        train_examples: fine-tune on a random subset of this many training records (learning curves,
            few-shot runs), the same subset for every run with the same ``seed`` (this data seed, not
            seed_everything); the label set still comes from the whole file. None: all of them.
    """

    drop_last_train_batch = False

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        format: Format = "auto",
        tsv_quoting: TsvQuoting = "none",
        empty_texts: EmptyTexts = "fail",
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        tokens_field: str = "tokens",
        tags_field: str = "tags",
        question_field: str = "question",
        context_field: str = "context",
        answers_field: str = "answers",
        id_field: str = "id",
        source_field: str = "source",
        target_field: str = "target",
        stride: int = 32,
        train_examples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        super().__init__()
        if max_length < 4:
            raise ConfigError(f"data.max_length={max_length} is too short")
        for key, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                  ("stride", stride, 0), ("num_workers", num_workers, 0)):
            if value is not None and value < least:
                raise ConfigError(f"data.{key}={value} must be at least {least}")
        for key, value, choices in (("format", format, Format), ("tsv_quoting", tsv_quoting, TsvQuoting),
                                    ("empty_texts", empty_texts, EmptyTexts)):
            check_choice(key, value, choices)
        if train_examples is not None and train_examples < 1:
            raise ConfigError(f"data.train_examples={train_examples} must be at least 1 (or null for all)")
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.format, self.tsv_quoting, self.empty_texts = format, tsv_quoting, empty_texts
        self.tokenizer_path, self.max_length = tokenizer, max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.text_field, self.text_pair_field, self.label_field = text_field, text_pair_field, label_field
        self.tokens_field, self.tags_field = tokens_field, tags_field
        self.question_field, self.context_field, self.answers_field, self.id_field = question_field, context_field, answers_field, id_field
        self.source_field, self.target_field = source_field, target_field
        self.stride, self.num_workers, self.seed, self.train_examples = stride, num_workers, seed, train_examples
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.tokenizer: Tokenizer | None = None
        self.records: dict[str, list[dict]] = {}
        self.datasets: dict[str, WindowDataset] = {}

    def file(self, split: str) -> Path | None:
        return Path(self.files[split]) if self.files[split] else None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer_path is None:
            raise ConfigError(
                "data.tokenizer is not set: fine-tuning needs the tokenizer the model was pretrained with "
                "(model.pretrained sets it to the run's tokenizer.json) or a tokenizer.json"
            )
        self.tokenizer = self.tokenizer or Tokenizer.load(self.tokenizer_path)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.files["train"] is None:  # the task's built-in demo
            demo = (module.demo_task if module is not None else write_demo_task)(self.cache_dir / "tasks")
            self.files = {**self.files, **{k: str(v) for k, v in demo.items() if self.files.get(k) is None}}
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}.get(stage, SPLITS)
        if module is not None:
            module.require_special_tokens(self.tokenizer)
        for split in ("train", *wanted):  # the training records come first: they define the label set
            if split in self.datasets or self.files[split] is None:
                continue
            if split == "train" and split not in wanted and getattr(module, "labels_known", True):
                continue
            records = read_records(self.files[split], self.format, self.tsv_quoting)
            if module is not None:
                fields = module.text_fields(self)
                records = drop_empty_texts(records, self.files[split], fields, self.empty_texts)
            self.records[split] = records  # all: the label set comes from these
            if split == "train" and self.train_examples is not None:
                records = self._subset(records)
            if module is not None:
                self.datasets[split] = WindowDataset(module.build_features(records, split, self))
        for split in wanted:
            if split not in self.datasets:
                raise CorpusError(f"`{stage}` needs data.{split}_file")
        if self.trainer is not None and self.trainer.is_global_zero and self.trainer.default_root_dir:
            self.tokenizer.save(Path(self.trainer.default_root_dir) / "tokenizer.json")

    def _subset(self, records: list[dict]) -> list[dict]:
        if self.train_examples > len(records):
            raise CorpusError(f"data.train_examples={self.train_examples} exceeds the {len(records)} records of {self.files['train']}")
        keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(self.seed))[: self.train_examples]
        return [records[i] for i in sorted(keep.tolist())]  # in file order

    def _collate_fn(self):
        return self.trainer.lightning_module.collate

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self._make_train_sampler(len(self.datasets["train"]), self.seed), self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
