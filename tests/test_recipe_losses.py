"""Fixed-seed training losses of every recipe, against those recorded before the stack's second edition.

tests/data/recipe_losses.json was written by this module (``LIT_PTM_RECORD_LOSSES=1 pytest
tests/test_recipe_losses.py`` records the recipes it lacks; ``=all`` rewrites every entry) at commit
6de0322, before the stack was reshaped (SpanBERT, MASS, T5 and BART, later XLNet and MPNet, when they were added): a refactoring of the
stack, the collators or the objectives that changes what a recipe trains changes these numbers. Each
pretraining recipe runs 20 steps of configs/tiny.yaml with dropout 0.1 (so the dropout stream is
checked too) on a generated corpus with committed tokenizers; each fine-tuning recipe then runs 20
steps from that run on the synthetic data of test_finetune. All in float64, so that the numbers do
not depend on the CPU's kernels.
"""

import json
import shutil
import os
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, scalars, tiny_args, write_corpus
from test_finetune import keyword_dataset, ner_dataset, qa_dataset

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "recipe_losses.json"
RECORD = os.environ.get("LIT_PTM_RECORD_LOSSES") in ("1", "all")
PRETRAIN = ("bert", "roberta", "albert", "gpt", "spanbert", "mass", "t5", "bart", "xlnet", "mpnet", "unilm", "glm")
FINETUNE = (("classify", "bert"), ("tag", "bert"), ("qa", "bert"), ("classify", "gpt"))
STEPS = 20


def _train_losses(run_dir: Path) -> dict[str, list[float]]:
    out = {}
    for tag in ("train/loss", "train/mlm_loss", "train/nsp_loss", "train/sop_loss", "train/sbo_loss",
                "train/loss_bidirectional", "train/loss_l2r", "train/loss_r2l", "train/loss_seq2seq"):
        values = scalars(run_dir, tag)
        if values:
            out[tag] = [values[step] for step in sorted(values)]
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("recipes")
    # float64: the comparison must hold on any CPU, whatever order its kernels sum in.
    common = ["--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", str(STEPS),
              "--trainer.limit_val_batches", "4", "--trainer.precision", "64-true"]
    # A generated corpus and committed tokenizers (tokenizer training breaks ties in hash-map order,
    # and the built-in corpus is the installed Python's), so the data are the same everywhere.
    corpus = write_corpus(root / "corpus.txt", n_docs=80, seed=0)
    out = {}
    for recipe in PRETRAIN:
        tokenizer = DATA / f"tokenizer-{recipe}.json"
        data = ["--data.init_args.train_files", str(corpus)]
        data += ["--data.init_args.tokenizer", str(tokenizer)] if tokenizer.exists() else []
        run_cli(["fit", *tiny_args(recipe, root / recipe), *common, *data, "--model.init_args.config.dropout", "0.1",
                 "--model.init_args.config.attention_dropout", "0.1"])
        if RECORD and not tokenizer.exists():
            shutil.copy(root / recipe / "tokenizer.json", tokenizer)
        out[recipe] = {**_train_losses(root / recipe), "val/loss": scalars(root / recipe, "val/loss")[STEPS - 1]}
    old = Path.cwd()
    os.chdir(ROOT)  # the fine-tuning recipes' built-in demo data
    try:
        for task, base in FINETUNE:
            name, run = f"finetune/{task}<-{base}", root / f"{task}-{base}"
            make = {"classify": keyword_dataset, "tag": ner_dataset, "qa": qa_dataset}[task]
            data = ["--data.init_args.train_file", str(make(root / f"{task}-train.jsonl", 200, 0)),
                    "--data.init_args.val_file", str(make(root / f"{task}-dev.jsonl", 40, 1))]
            run_cli(["fit", "--config", f"configs/finetune/{task}.yaml", "--config", "configs/finetune/tiny.yaml",
                     "--model.init_args.pretrained", str(root / base), "--trainer.default_root_dir", str(run),
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *common,
                     "--trainer.max_epochs", "-1", "--trainer.check_val_every_n_epoch", "null", *data])
            out[name] = {**_train_losses(run), "val/loss": scalars(run, "val/loss")[STEPS - 1]}
    finally:
        os.chdir(old)
    if RECORD:
        recorded = {} if os.environ["LIT_PTM_RECORD_LOSSES"] == "all" else json.loads(REFERENCE.read_text())
        REFERENCE.write_text(json.dumps({**out, **recorded}, indent=1) + "\n")
    return out


@pytest.mark.parametrize("name", [*PRETRAIN, *(f"finetune/{t}<-{b}" for t, b in FINETUNE)])
def test_fixed_seed_losses_equal_the_recorded_ones(name, measured):
    reference = json.loads(REFERENCE.read_text())[name]
    got = measured[name]
    assert set(got) == set(reference)
    for tag, values in reference.items():
        values = values if isinstance(values, list) else [values]
        ours = got[tag] if isinstance(got[tag], list) else [got[tag]]
        # UniLM's per-sub-task and NSP losses: logged at the steps that ran their sub-task (NSP: repeated by Lightning)
        sparse = name == "unilm" and tag not in ("train/loss", "train/mlm_loss")
        full = (len(values) if sparse else STEPS) if tag.startswith("train/") else 1
        assert len(ours) == len(values) == full, tag
        worst = max(abs(a - b) for a, b in zip(ours, values))
        assert worst <= 1e-6, f"{name} {tag}: differs from the recorded losses by up to {worst:.3g}"
