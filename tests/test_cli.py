"""End to end through the CLI: recipes learn, runs resume exactly, bad input gets clear errors."""

import math
import os

import pytest
import torch

from conftest import CONFIGS, ROOT, run_cli, run_module, scalars, tiny_args, write_corpus

RECIPES = ["gpt", "bert", "roberta", "albert", "spanbert", "mass", "t5", "bart", "xlnet", "mpnet", "unilm", "glm"]
# The loss parts each recipe logs besides its loss (MLM + a second objective), and its accuracies.
PARTS = {"bert": ("mlm", "nsp"), "albert": ("mlm", "sop"), "spanbert": ("mlm", "sbo"), "unilm": ("mlm", "nsp")}
ACCURACIES = {"gpt": (), "mass": ("lm",), "t5": ("lm",), "bart": ("lm",), "xlnet": ("plm",), "mpnet": ("plm",), "glm": ("lm",)}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_lowers_validation_loss_and_tests(recipe, tmp_path, cache_dir):
    root = tmp_path / recipe
    before = run_cli(["validate", *tiny_args(recipe, root)]).trainer.callback_metrics["val/loss"].item()
    cli = run_cli(["fit", *tiny_args(recipe, root)])
    after = cli.trainer.callback_metrics["val/loss"].item()
    vocab = cli.datamodule.tokenizer.vocab_size
    assert before > math.log(vocab) - 1.0  # an untrained model is near uniform
    assert after < before - 1.0, (before, after)
    # The run directory holds everything the checkpoint needs, and TensorBoard has the stable names.
    for name in ("last.ckpt", "best.ckpt", "config.yaml", "tokenizer.json"):
        assert (root / name).is_file(), name
    for tag in ("train/loss", "val/loss", "val/ppl", "train/lr", "train/tokens_per_sec"):
        assert scalars(root, tag), tag
    for name in ACCURACIES.get(recipe, ("mlm",)):
        assert scalars(root, f"val/{name}_acc") and scalars(root, f"train/{name}_acc"), name
    parts = PARTS.get(recipe)
    if parts:  # MLM + a second objective: each loss part and its accuracy
        for tag in (*(f"{split}/{p}_loss" for p in parts for split in ("train", "val")), f"train/{parts[1]}_acc", f"val/{parts[1]}_acc"):
            assert scalars(root, tag), tag
    # `test` on held-out documents reports loss and perplexity.
    tested = run_cli(["test", *tiny_args(recipe, root), "--ckpt_path", str(root / "last.ckpt")]).trainer.callback_metrics
    if parts:  # loss = MLM + the second part; perplexity is the MLM part's
        assert tested["test/ppl"].item() == pytest.approx(math.exp(tested["test/mlm_loss"].item()), rel=0.05)
        assert tested["test/ppl"].item() < math.exp(tested["test/loss"].item())
    else:
        assert tested["test/ppl"].item() == pytest.approx(math.exp(tested["test/loss"].item()), rel=1e-4)
    assert tested["test/loss"].item() < before - 1.0


@pytest.mark.parametrize("recipe", ["gpt", "bert", "albert", "bart", "xlnet"])
def test_killed_run_resumes_with_the_same_batches_and_losses(recipe, tmp_path, cache_dir):
    """Killed after step 8, resumed from the checkpoint of step 5: the same losses as a straight run.
    BART (dropout, span and sentence-permutation noise drawn in worker processes) and XLNet (dropout,
    n-grams and factorisation orders drawn in worker processes) on the built-in corpus.
    The pair recipes draw their sentence pairs per epoch: on a corpus of 3-4 batches an epoch (committed
    tokenizers, so the count is the same everywhere), the checkpoint falls inside epoch 1 and the resumed
    run goes on through epochs 2 and 3. The resumed run reads its data in two DataLoader worker processes,
    the others in the main process: workers must draw each epoch's pairs as the main process does, and
    must start from epoch 1 (Lightning creates the first iterator, and workers prefetch from it, before
    it sets the sampler's epoch)."""
    common = [
        "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
        "--checkpoint.every_n_steps", "5", "--model.init_args.config.dropout", "0.1",
        "--data.init_args.batch_size", "4",
    ]
    pairs = recipe in ("bert", "albert")
    if pairs:  # 17 / 15 training pairs: 4 / 3 batches an epoch (NSP needs two documents in each held-out split)
        corpus = write_corpus(tmp_path / "corpus.txt", n_docs={"bert": 12, "albert": 15}[recipe])
        common += ["--data.init_args.train_files", str(corpus), "--data.init_args.val_fraction", "0.15",
                   "--data.init_args.test_fraction", "0.15", "--data.init_args.tokenizer", str(ROOT / "tests" / "data" / f"tokenizer-{recipe}.json")]
    workers = ["--data.init_args.num_workers", "2"]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), "LIT_PTM_CACHE": str(cache_dir)}
    straight = tmp_path / "straight"
    r = run_module(["fit", *tiny_args(recipe, straight, *common, "--trainer.max_steps", "13")], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / "killed"
    # (Not in the killed run: its orphaned workers would hold the run directory's lock for a few seconds.)
    r = run_module(["fit", *tiny_args(recipe, killed, *common, "--trainer.max_steps", "13",
                                      "--trainer.callbacks+=helpers.KillAt", "--trainer.callbacks.step", "8")], env=env)
    assert r.returncode == 3, r.stderr[-3000:]
    ckpt = torch.load(killed / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5  # the periodic checkpoint, written before the kill at step 8
    if pairs:
        data = ckpt["PretrainDataModule"]
        assert data["epoch"] == 1 and 0 < data["batches"] and not data["epoch_done"], data  # inside epoch 1
    r = run_module(["fit", *tiny_args(recipe, killed, *common, *workers, "--trainer.max_steps", "13"),
                    "--ckpt_path", str(killed / "last.ckpt")], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = scalars(straight, "train/loss"), scalars(killed, "train/loss")
    assert sorted(a) == sorted(b) and len(a) == 13
    for step in range(5, 13):
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])
    va, vb = scalars(straight, "val/loss"), scalars(killed, "val/loss")
    assert va.keys() == vb.keys() and all(va[s] == pytest.approx(vb[s], abs=1e-6) for s in va)


def test_resume_from_the_end_of_an_epoch_starts_the_next_epoch_whole(tmp_path, cache_dir):
    """A checkpoint written when an epoch ends resumes into the next epoch with nothing skipped, also
    when DataLoader workers prefetch before Lightning sets the sampler's epoch (they replayed epoch 0)."""
    corpus = write_corpus(tmp_path / "small.txt", n_docs=40)
    common = ["--data.init_args.train_files", str(corpus), "--data.init_args.vocab_size", "400", "--data.init_args.batch_size", "4",
              "--trainer.max_steps", "-1", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "1.0",
              "--trainer.check_val_every_n_epoch", "1",
              "--model.init_args.optim.schedule", "constant"]  # the decay's length depends on max_epochs
    straight = tmp_path / "straight"
    cli = run_cli(["fit", *tiny_args("gpt", straight, *common, "--trainer.max_epochs", "2")])
    per_epoch = cli.trainer.num_training_batches
    assert cli.trainer.global_step == 2 * per_epoch and per_epoch >= 5
    split = tmp_path / "split"
    run_cli(["fit", *tiny_args("gpt", split, *common, "--trainer.max_epochs", "1")])
    state = torch.load(split / "last.ckpt", weights_only=True)["PretrainDataModule"]
    assert state["epoch"] == 0 and state["batches"] == per_epoch and state["epoch_done"]
    cli = run_cli(["fit", *tiny_args("gpt", split, *common, "--trainer.max_epochs", "2", "--data.init_args.num_workers", "2"),
                   "--ckpt_path", str(split / "last.ckpt")])
    assert cli.trainer.global_step == 2 * per_epoch
    a, b = scalars(straight, "train/loss"), scalars(split, "train/loss")
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])


def test_user_corpus_jsonl_and_held_out_files(tmp_path, cache_dir):
    import json

    write_corpus(tmp_path / "train.txt", n_docs=30)
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"text": t}) + "\n" for t in write_corpus(tmp_path / "v.txt", 6, seed=9).read_text().split("\n\n")))
    cli = run_cli(["fit", *tiny_args("bert", tmp_path / "run", "--data.init_args.train_files", str(tmp_path / "train*.txt"),
                                     "--data.init_args.val_files", str(val), "--data.init_args.vocab_size", "500",
                                     "--trainer.max_steps", "20", "--trainer.val_check_interval", "10")])
    dm = cli.datamodule
    assert dm.tokenizer.vocab_size <= 500  # trained on the user's files, not the built-in corpus
    vocab = dm.tokenizer.hf.get_vocab()
    assert "w" in vocab and "the" not in vocab  # the synthetic words use w, digits and a-j only
    # Validation comes from the held-out JSONL file, training from all 30 documents of the glob.
    assert dm.datasets["val"].windows.store.num_docs == 6
    assert dm.datasets["train"].windows.store.num_docs == 30 and "test" in dm.datasets
    assert cli.trainer.callback_metrics["val/loss"] > 0


def cli_error(args, capsys) -> str:
    with pytest.raises((SystemExit, Exception)) as e:
        run_cli(args)
    if isinstance(e.value, SystemExit):
        return capsys.readouterr().err
    return str(e.value)


def test_unknown_config_key_is_named(tmp_path, capsys, cache_dir):
    err = cli_error(["fit", *tiny_args("bert", tmp_path, "--model.init_args.config.hiden_size", "64")], capsys)
    assert "hiden_size" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    batchsize: 3\n")
    err = cli_error(["fit", *tiny_args("bert", tmp_path, "--config", str(bad))], capsys)
    assert "batchsize" in err


def test_missing_and_non_utf8_corpus_are_named(tmp_path, capsys, cache_dir):
    err = cli_error(["fit", *tiny_args("gpt", tmp_path / "r", "--data.init_args.train_files", str(tmp_path / "none*.txt"))], capsys)
    assert "no corpus file matches" in err and "none*.txt" in err
    bad = write_corpus(tmp_path / "latin1.txt", n_docs=20)
    bad.write_bytes(bad.read_bytes() + "\ncaf\u00e9 cr\u00e8me.\n".encode("latin-1"))
    err = cli_error(["fit", *tiny_args("gpt", tmp_path / "r", "--data.init_args.train_files", str(bad))], capsys)
    assert "latin1.txt:" in err and "not valid UTF-8" in err


def test_sequence_longer_than_positions_is_refused(tmp_path, capsys, cache_dir):
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "r", "--data.init_args.seq_length", "256")], capsys)
    assert "data.seq_length=256 exceeds model.config.max_position_embeddings=128" in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_model_vocabulary_must_match_the_tokenizer(tmp_path, capsys, cache_dir):
    err = cli_error(["fit", *tiny_args("bert", tmp_path, "--model.init_args.config.vocab_size", "5000")], capsys)
    assert "model.config.vocab_size=5000 (from the config" in err and "does not match the tokenizer" in err and "2000 tokens" in err


def test_bad_checkpoints_are_refused_with_reasons(tmp_path, capsys, cache_dir):
    root = tmp_path / "bert"
    run_cli(["fit", *tiny_args("bert", root, "--trainer.max_steps", "3")])
    ckpt = root / "last.ckpt"
    # Truncated file.
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[:5000])
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "b2", "--ckpt_path", str(broken))], capsys)
    assert f"checkpoint {broken} cannot be read: it is corrupt or truncated" in err
    # Another objective.
    err = cli_error(["fit", *tiny_args("gpt", tmp_path / "g", "--ckpt_path", str(ckpt))], capsys)
    assert "holds a MaskedLM model, but this run's objective is CausalLM" in err and str(ckpt) in err
    # Resuming takes the run's own tokenizer.json; a tokenizer given explicitly must be the checkpoint's.
    from lit_ptm.data.corpus import iter_documents
    from lit_ptm.tokenizer import train_tokenizer

    other = write_corpus(tmp_path / "other.txt", n_docs=60)
    small = tmp_path / "small-tokenizer.json"
    train_tokenizer((s for d in iter_documents(other) for s in d), "wordpiece", 500).save(small)
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "b3", "--data.init_args.tokenizer", str(small), "--ckpt_path", str(ckpt))], capsys)
    assert "model.config.vocab_size=2000 (from the config, or from the checkpoint being loaded) does not match" in err
    # Another tokenizer of the same size: its identity (sha) differs.
    builtin = cache_dir / "builtin_corpus.txt"
    same_size = tmp_path / "unigram-tokenizer.json"
    train_tokenizer((s for d in iter_documents(builtin) for s in d), "unigram", 2000).save(same_size)
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "b4", "--data.init_args.tokenizer", str(same_size),
                                       "--ckpt_path", str(ckpt))], capsys)
    assert "trained with another tokenizer" in err and "vocabulary 2000" in err
    # Without data.tokenizer, a resume uses the run's tokenizer.json (found beside the checkpoint).
    resumed = run_cli(["fit", *tiny_args("bert", root, "--trainer.max_steps", "4", "--ckpt_path", str(ckpt))])
    assert resumed.datamodule.tokenizer_path == str(root / "tokenizer.json") and resumed.trainer.global_step == 4


def test_objective_and_data_mismatches_are_named(tmp_path, capsys, cache_dir):
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "a", "--data.init_args.packing", "contiguous")], capsys)
    assert "data.packing=contiguous does not suit the MaskedLM objective with model.pair_task=nsp: it takes nsp_pairs" in err
    err = cli_error(["fit", *tiny_args("gpt", tmp_path / "b", "--data.init_args.packing", "full_sentences")], capsys)
    assert "data.packing=full_sentences does not suit the CausalLM objective: it takes contiguous" in err
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "c", "--model.init_args.config.type_vocab_size", "0")], capsys)
    assert "model.pair_task=nsp" in err and "model.config.type_vocab_size >= 2 (got 0)" in err
    train, val = write_corpus(tmp_path / "train.txt", n_docs=30), write_corpus(tmp_path / "val.txt", n_docs=1, seed=5)
    err = cli_error(["fit", *tiny_args("bert", tmp_path / "d", "--data.init_args.train_files", str(train), "--data.init_args.val_files",
                                       str(val), "--data.init_args.vocab_size", "400")], capsys)
    assert "the val split holds 1 document(s), but next-sentence prediction draws B from another document" in err
    assert "data.val_files" in err


def test_checkpoint_of_a_module_built_in_python_loads_through_the_cli(tmp_path, cache_dir):
    """A module built in Python (dataclass configs, no LightningCLI) writes a checkpoint that the CLI
    reads: LightningCLI loads hyper-parameters with torch.load(weights_only=True), so they are plain dicts."""
    import lightning as L

    from lit_ptm.callbacks import RunCheckpoint
    from lit_ptm.data import PretrainDataModule
    from lit_ptm.nn import ModelConfig
    from lit_ptm.objectives import CausalLM
    from lit_ptm.objectives.base import OptimConfig

    import yaml

    # The architecture of the recipe the CLI reads it with (gpt.yaml + tiny.yaml): a resume or an evaluation
    # refuses a checkpoint whose architecture contradicts the given config.
    architecture = {**yaml.safe_load((CONFIGS / "gpt.yaml").read_text())["model"]["init_args"]["config"],
                    **yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["model"]["init_args"]["config"]}
    model = CausalLM(ModelConfig(**architecture), OptimConfig(lr=2e-3, warmup_steps=2))
    data = PretrainDataModule(tokenizer_kind="bpe", vocab_size=2000, lowercase=False, seq_length=64, batch_size=8, num_workers=0)
    root = tmp_path / "python"
    trainer = L.Trainer(max_steps=2, default_root_dir=root, callbacks=[RunCheckpoint()], logger=False, enable_progress_bar=False,
                        limit_val_batches=2, use_distributed_sampler=False)
    trainer.fit(model, data)
    assert torch.load(root / "last.ckpt", weights_only=True)["hyper_parameters"]["config"]["vocab_size"] == 2000
    cli = run_cli(["validate", *tiny_args("gpt", tmp_path / "cli", "--ckpt_path", str(root / "last.ckpt"))])
    assert cli.model.config.vocab_size == 2000 and cli.trainer.callback_metrics["val/loss"].item() > 0


def test_mixed_precision_accumulation_and_clipping_are_trainer_flags(tmp_path, cache_dir):
    root = tmp_path / "bf16"
    cli = run_cli(["fit", *tiny_args("gpt", root, "--trainer.precision", "bf16-mixed", "--trainer.accumulate_grad_batches", "2",
                                     "--trainer.gradient_clip_val", "1.0", "--trainer.max_steps", "6", "--trainer.val_check_interval", "12")])
    assert cli.trainer.global_step == 6
    state = torch.load(root / "last.ckpt", weights_only=True)["PretrainDataModule"]
    assert state["batches"] == 12  # two batches per optimizer step, both counted for resume
    losses = scalars(root, "train/loss")
    assert all(math.isfinite(v) for v in losses.values())


def test_sharing_and_factorised_embeddings_are_flags_of_any_objective(tmp_path, cache_dir):
    """A GPT with ALBERT's factorised embeddings and all-shared layers, from flags alone, learns."""
    flags = ["--model.init_args.config.share", "all", "--model.init_args.config.embedding_size", "32",
             "--model.init_args.config.num_layers", "4", "--trainer.max_steps", "150"]
    root = tmp_path / "albert-gpt"
    before = run_cli(["validate", *tiny_args("gpt", root, *flags)]).trainer.callback_metrics["val/loss"].item()
    cli = run_cli(["fit", *tiny_args("gpt", root, *flags)])
    model = cli.model
    assert model.transformer.embeddings.tokens.weight.shape[1] == 32
    assert all(b is model.transformer.blocks[0] for b in model.transformer.blocks)
    assert cli.trainer.callback_metrics["val/loss"].item() < before - 1.0


@pytest.mark.parametrize("recipe, task", [("bert", "nsp"), ("albert", "sop")])
def test_pair_task_accuracy_rises_above_chance_on_the_builtin_corpus(tmp_path, cache_dir, recipe, task):
    """Each pair-task recipe with configs/tiny.yaml on the built-in corpus, at batch 64 for 800 steps
    (~6 epochs, ~40 s): the pair loss falls and the training accuracy over the logged batches of steps
    600-800 (~1,300 pairs; chance: 0.5 +- 0.014) is above one half. Pairs are drawn anew every epoch, so
    training accuracy is no longer inflated by pairs memorised in earlier epochs. Measured in exactly
    this setting with seeds 42 / 7: training accuracy NSP 0.629 / 0.659, SOP 0.589 / 0.577; held-out at
    step 800 NSP 0.564 / 0.587, SOP 0.618 / 0.656; training loss of steps 600-800 below that of steps
    0-200 by NSP 0.050 / 0.058, SOP 0.020 / 0.013.
    The symptom that per-epoch pairs cured, measured: with pairs built once and revisited every epoch,
    training accuracy was NSP 0.755 / 0.735 (SOP 0.648 / 0.621) against held-out NSP 0.582 / 0.567, a
    gap of 0.17 that was memorisation (held-out NSP loss then rose with training: 0.67 at step 300 to
    1.37 at 3,000 in README's main job). The NSP gap is now 0.07; it must stay below 0.12."""
    root = tmp_path / task
    run_cli(["fit", *tiny_args(recipe, root, "--data.init_args.batch_size", "64", "--trainer.max_steps", "800",
                               "--trainer.val_check_interval", "400", "--trainer.log_every_n_steps", "10")])
    accuracy, loss = scalars(root, f"train/{task}_acc"), scalars(root, f"train/{task}_loss")
    late = sum(accuracy[s] for s in accuracy if s >= 600) / len([s for s in accuracy if s >= 600])
    early_loss, late_loss = [loss[s] for s in loss if s < 200], [loss[s] for s in loss if s >= 600]
    assert late > 0.56, late
    assert sum(late_loss) / len(late_loss) < sum(early_loss) / len(early_loss) - 0.01
    if task == "nsp":
        held_out = scalars(root, "val/nsp_acc")[799]
        assert late - held_out < 0.12, (late, held_out)  # no memorised pairs


def test_nsp_head_learns_next_sentence_prediction_when_documents_differ_in_topic(tmp_path, cache_dir):
    """Each document draws its words from a topic of its own, so a random B is recognisable by its
    words: the pooled pair head must fit NSP well above chance (labels, layout and head wired right).
    Pairs are drawn anew every epoch, so the head must learn the topics rather than memorise ~130 pairs:
    measured, a run of 300 steps ends at 0.65 (logged accuracy of steps 260-300), one of 600 at 1.0."""
    import random

    rng = random.Random(0)
    docs = []
    for d in range(80):
        topic = [f"t{d % 40}w{j}" for j in range(25)]
        docs.append("\n".join(" ".join(rng.choice(topic) for _ in range(rng.randint(5, 12))) + "." for _ in range(rng.randint(4, 10))))
    corpus = tmp_path / "topics.txt"
    corpus.write_text("\n\n".join(docs) + "\n")
    root = tmp_path / "nsp"
    run_cli(["fit", *tiny_args("bert", root, "--data.init_args.train_files", str(corpus), "--data.init_args.vocab_size", "1200",
                               "--trainer.max_steps", "600", "--trainer.log_every_n_steps", "10")])
    accuracy = scalars(root, "train/nsp_acc")
    first, last = [accuracy[s] for s in sorted(accuracy)[:3]], [accuracy[s] for s in sorted(accuracy)[-5:]]
    assert sum(first) / 3 < 0.75 and sum(last) / 5 > 0.9, (first, last)


# -- resuming: the config a user gives is the config that runs; "train some more" is exact -------
@pytest.mark.parametrize("recipe", ["gpt", "bert", "roberta", "spanbert", "mass", "t5", "bart", "xlnet", "mpnet"])
def test_train_some_more_continues_with_the_batches_of_an_uninterrupted_run(recipe, tmp_path, cache_dir):
    """K steps (fit ends at max_steps, validating at its last step, as configs/tiny.yaml does), then the
    same run resumed to 2K: the same losses as 2K straight. The schedule is constant, so its length
    (which depends on max_steps) does not enter."""
    common = ["--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
              "--model.init_args.config.dropout", "0.1", "--model.init_args.optim.schedule", "constant",
              "--data.init_args.batch_size", "4"]
    straight, more = tmp_path / "straight", tmp_path / "more"
    run_cli(["fit", *tiny_args(recipe, straight, *common, "--trainer.max_steps", "12")])
    run_cli(["fit", *tiny_args(recipe, more, *common, "--trainer.max_steps", "6")])
    run_cli(["fit", *tiny_args(recipe, more, *common, "--trainer.max_steps", "12"), "--ckpt_path", str(more / "last.ckpt")])
    a, b = scalars(straight, "train/loss"), scalars(more, "train/loss")
    assert sorted(a) == sorted(b) == list(range(12))
    for step in range(6, 12):
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])
    va, vb = scalars(straight, "val/loss"), scalars(more, "val/loss")
    assert va.keys() == vb.keys() == {5, 11} and all(va[s] == pytest.approx(vb[s], abs=1e-6) for s in va)


def test_train_some_more_after_max_epochs_with_dropout(tmp_path, cache_dir):
    """A run that ended at max_epochs, resumed with a larger max_epochs, equals the longer run straight."""
    corpus = write_corpus(tmp_path / "small.txt", n_docs=40)
    common = ["--data.init_args.train_files", str(corpus), "--data.init_args.vocab_size", "400", "--data.init_args.batch_size", "4",
              "--trainer.max_steps", "-1", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
              "--model.init_args.config.dropout", "0.1", "--model.init_args.optim.schedule", "constant"]
    straight, more = tmp_path / "straight", tmp_path / "more"
    run_cli(["fit", *tiny_args("bert", straight, *common, "--trainer.max_epochs", "2")])
    run_cli(["fit", *tiny_args("bert", more, *common, "--trainer.max_epochs", "1")])
    run_cli(["fit", *tiny_args("bert", more, *common, "--trainer.max_epochs", "2"), "--ckpt_path", str(more / "last.ckpt")])
    a, b = scalars(straight, "train/loss"), scalars(more, "train/loss")
    assert sorted(a) == sorted(b) and len(a) >= 6
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("resume") / "gpt"
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")])
    return root


def test_resume_refuses_architecture_flags_that_contradict_the_checkpoint(short_run, capsys):
    for flag, value, shown in (("--model.init_args.config.hidden_size", "128", "model.config.hidden_size=128 (the checkpoint's: 64)"),
                               ("--model.init_args.config.num_layers", "3", "model.config.num_layers=3 (the checkpoint's: 2)")):
        err = cli_error(["fit", *tiny_args("gpt", short_run, flag, value, "--trainer.max_steps", "4"),
                         "--ckpt_path", str(short_run / "last.ckpt")], capsys)
        assert shown in err and "last.ckpt was built with other settings" in err, err


def test_resume_refuses_a_given_setting_even_when_it_equals_the_default(short_run, tmp_path, capsys):
    err = cli_error(["fit", *tiny_args("gpt", short_run, "--model.init_args.config.num_layers", "12", "--trainer.max_steps", "4"),
                     "--ckpt_path", str(short_run / "last.ckpt")], capsys)
    assert "model.config.num_layers=12 (the checkpoint's: 2)" in err, err
    # The same from a config file (12 layers is ModelConfig's default).
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("model:\n  init_args:\n    config:\n      num_layers: 12\n")
    err = cli_error(["fit", *tiny_args("gpt", short_run, "--config", str(deeper), "--trainer.max_steps", "4"),
                     "--ckpt_path", str(short_run / "last.ckpt")], capsys)
    assert "model.config.num_layers=12 (the checkpoint's: 2)" in err, err


def test_resume_applies_resumable_settings_and_records_them(tmp_path, short_run):
    import shutil

    import yaml

    run = tmp_path / "copy"
    shutil.copytree(short_run, run)
    with pytest.warns(UserWarning, match=r"changed settings.*model.optim.lr: 0.002 -> 0.5.*trainer.max_steps: 2 -> 3"):
        cli = run_cli(["fit", *tiny_args("gpt", run, "--model.init_args.optim.lr", "0.5", "--trainer.max_steps", "3",
                                         "--trainer.limit_val_batches", "0"), "--ckpt_path", str(run / "last.ckpt")])
    assert cli.model.optim.lr == 0.5 and cli.trainer.global_step == 3
    assert cli.trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.5
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["model"]["init_args"]["optim"]["lr"] == 0.5 and recorded["trainer"]["max_steps"] == 3


def test_config_keys_are_never_matched_by_prefix(tmp_path, capsys):
    err = cli_error(["fit", *tiny_args("gpt", tmp_path, "--model.init_args.config.hidden", "32")], capsys)
    assert "unknown config key --model.init_args.config.hidden (keys are never matched by prefix; did you mean " \
           "--model.init_args.config.hidden_size?)" in err, err[-800:]
    err = cli_error(["fit", *tiny_args("gpt", tmp_path, "--data.batch", "32")], capsys)
    assert "Option 'batch' is not accepted" in err, err[-800:]
    err = cli_error(["fit", *tiny_args("gpt", tmp_path, "--trainer.max_step", "32")], capsys)
    assert "unrecognized arguments: --trainer.max_step" in err, err[-800:]


def test_lightning_still_calls_the_checkpoint_hook(short_run, monkeypatch):
    """lit_ptm overrides LightningCLI's private _parse_ckpt_path (its checks of --ckpt_path happen there).
    If Lightning renames it or stops calling it, this fails loudly."""
    from lightning.pytorch.cli import LightningCLI

    from lit_ptm.cli import LitPtmCLI

    assert "_parse_ckpt_path" in vars(LightningCLI), "LightningCLI no longer has _parse_ckpt_path"
    calls = []
    original = LitPtmCLI._parse_ckpt_path
    monkeypatch.setattr(LitPtmCLI, "_parse_ckpt_path", lambda self: calls.append(1) or original(self))
    run_cli(["validate", *tiny_args("gpt", short_run, "--trainer.limit_val_batches", "1"), "--ckpt_path", str(short_run / "last.ckpt")])
    assert calls == [1]


def test_a_line_without_end_is_refused_fast_within_bounded_memory(tmp_path):
    import tracemalloc

    from lit_ptm.data.corpus import MAX_SENTENCE_BYTES, CorpusError, iter_documents

    path = tmp_path / "one-line.txt"
    with open(path, "wb") as f:
        f.write(b"a sentence.\n\n")
        for _ in range(4 * MAX_SENTENCE_BYTES // 4096):
            f.write(b"word " * 819 + b"x")  # 4 MB, no newline
    tracemalloc.start()
    with pytest.raises(CorpusError, match=r"one-line.txt:3: line longer than 1,048,576 bytes"):
        list(iter_documents(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * MAX_SENTENCE_BYTES, peak  # the old reader held the whole 4 MB line (and more)
