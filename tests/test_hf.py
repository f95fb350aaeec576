"""HF transformers interoperability: logits parity on import and export, exact round trips, tokenizers
by role, fine-tuning heads, and clear errors. Random tiny HF models are built and saved by the tests."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the test extra installs it; CI runs these

from conftest import CONFIGS, run_cli, scalars, tiny_args  # noqa: E402
from lit_ptm.hf import HFError, export_hf, import_hf, read_hf_dir  # noqa: E402
from lit_ptm.tokenizer import Tokenizer  # noqa: E402

SENTENCES = [f"the module number {i} defines the name {i % 7} and returns {i * 3} values." for i in range(300)] + [
    "Tokenizers split unfathomably long words into pieces.", "A second, shorter sentence!"]
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96, "max_position_embeddings": 40}
ROLES = {  # the special tokens each family's tokenizer has, by HF's names
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    "roberta": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "cls_token": "<s>",
                "sep_token": "</s>", "mask_token": "<mask>"},
    "albert": {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}


def hf_tokenizer(family, directory):
    """A tokenizer with the family's own special tokens (in its own order), saved by HF's save_pretrained."""
    from tokenizers import Tokenizer as Rust
    from tokenizers import models, pre_tokenizers, trainers

    specials = list(dict.fromkeys(ROLES[family].values()))
    if family in ("roberta", "gpt2"):
        rust = Rust(models.BPE())
        rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        rust = Rust(models.WordPiece(unk_token=ROLES[family]["unk_token"]))
        rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    rust.train_from_iterator(SENTENCES, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, **ROLES[family])
    fast.save_pretrained(directory)
    return fast


def hf_model(family, directory, seed=0, **overrides):
    """A random tiny HF model of ``family`` with its pretraining heads, saved (safetensors) with its tokenizer."""
    torch.manual_seed(seed)
    tok = hf_tokenizer(family, directory)
    V = len(tok)
    if family == "gpt2":
        config = transformers.GPT2Config(**{"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 2, "n_inner": 96, "n_positions": 40,
                                            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, **overrides})
        model = transformers.GPT2LMHeadModel(config)
    elif family == "bert":
        config = transformers.BertConfig(**{"vocab_size": V, "type_vocab_size": 2, "pad_token_id": tok.pad_token_id, **TINY, **overrides})
        model = transformers.BertForPreTraining(config) if config.type_vocab_size >= 2 else transformers.BertForMaskedLM(config)
    elif family == "roberta":
        config = transformers.RobertaConfig(**{"vocab_size": V, "type_vocab_size": 1, "pad_token_id": tok.pad_token_id,
                                               "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                               **TINY, "max_position_embeddings": 42, **overrides})
        model = transformers.RobertaForMaskedLM(config)
    else:
        config = transformers.AlbertConfig(**{"vocab_size": V, "embedding_size": 32, "type_vocab_size": 2, "pad_token_id": tok.pad_token_id,
                                              "hidden_act": "gelu_new", **TINY, **overrides})
        model = transformers.AlbertForPreTraining(config)
    with torch.no_grad():  # every parameter random (norms and biases too), so that no mapping hides behind 1s and 0s
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.eval().save_pretrained(directory)
    return model, tok


def batch(tok, family):
    texts = ["the module number 12 defines the name 5, and returns 36 values.", "Hi!"]
    if tok.pad_token is None:  # GPT-2 has none: pad with end-of-text, as lit_ptm does (padding is masked)
        tok.pad_token = tok.eos_token
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert not mask.all()  # padded
    types = (torch.arange(ids.size(1)) >= ids.size(1) // 2).long().expand_as(ids).contiguous() if family in ("bert", "albert") else None
    return ids, mask, types


def lit_logits(module, family, ids, mask, types):
    with torch.no_grad():
        batch = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
        hidden = module.encode(batch).hidden
        logits = module.lm_head(hidden)
        pair = module.pair_head(hidden) if getattr(module, "pair_task", "none") != "none" else None
    return logits, pair


def lit_module(pretrained):
    from lit_ptm.objectives import CausalLM, MaskedLM

    if pretrained.objective == "CausalLM":
        module = CausalLM(pretrained.config)
    else:
        pair = "nsp" if "pair_head.pooler.weight" in pretrained.state_dict and pretrained.config.embedding_size is None else (
            "sop" if "pair_head.pooler.weight" in pretrained.state_dict else "none")
        module = MaskedLM(pretrained.config, pair_task=pair)
    module.configure_model()
    module.load_state_dict(pretrained.state_dict, strict=True)
    return module.eval()


VARIANTS = [  # beyond each family's defaults: settings whose mapping differs
    ("bert", {"tie_word_embeddings": False}), ("gpt2", {"tie_word_embeddings": False}), ("bert", {"type_vocab_size": 1}),
    ("bert", {"hidden_act": "relu", "layer_norm_eps": 1e-7}), ("roberta", {"type_vocab_size": 2}), ("roberta", {"tie_word_embeddings": False}),
    ("albert", {"embedding_size": 64}), ("albert", {"num_hidden_groups": 2}), ("gpt2", {"n_inner": None, "activation_function": "relu"}),
]


@pytest.mark.parametrize("family, overrides", [(f, {}) for f in ("bert", "roberta", "albert", "gpt2")] + VARIANTS,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_hf_to_lit_ptm_logits_match_and_round_trip_is_exact(family, overrides, tmp_path):
    from lit_ptm.pretrained import load_pretrained

    hf_dir = tmp_path / "hf"
    model, tok = hf_model(family, hf_dir, **overrides)
    ids, mask, types = batch(tok, family)
    if overrides.get("type_vocab_size") == 1:
        types = None  # one segment
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if types is not None else {}))
    module = lit_module(load_pretrained(hf_dir))
    logits, pair = lit_logits(module, family, ids, mask, types)
    expected = out.logits if hasattr(out, "logits") and out.logits is not None else out.prediction_logits
    real = mask.bool()
    assert (logits[real] - expected[real]).abs().max().item() < 1e-5
    if pair is not None:
        hf_pair = out.seq_relationship_logits if family == "bert" else out.sop_logits
        assert (pair - hf_pair).abs().max().item() < 1e-5
    # The imported tokenizer encodes text to HF's ids, and its roles are HF's tokens.
    ours = Tokenizer.load(hf_dir / "tokenizer.json")
    for text in SENTENCES[-2:]:
        assert ours.encode_batch([text])[0][0] == tok(text, add_special_tokens=False)["input_ids"]
    assert ours.vocab_size == len(tok) and ours.ids.pad == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if family != "gpt2":
        assert (ours.ids.cls, ours.ids.sep, ours.ids.mask) == (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    # HF -> import -> export -> HF: every parameter back unchanged, in the same class.
    run = import_hf(hf_dir, tmp_path / "run")
    back, cls = export_hf(run, tmp_path / "back")
    assert cls == type(model).__name__
    again = getattr(transformers, cls).from_pretrained(back).eval()
    original, returned = model.state_dict(), again.state_dict()
    assert original.keys() == returned.keys()
    # Untied, HF's BERT / RoBERTa heads keep a second bias that their forward never reads (the decoder's own is
    # read): lit_ptm keeps the one that computes, and writes it to both.
    unused = {"cls.predictions.bias", "lm_head.bias"} if overrides.get("tie_word_embeddings") is False and family != "gpt2" else set()
    for key in original.keys() - unused:
        assert torch.equal(original[key], returned[key]), key
    assert transformers.AutoTokenizer.from_pretrained(back)(SENTENCES[0], add_special_tokens=False)["input_ids"] == \
        tok(SENTENCES[0], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("recipe, hf_class", [("bert", "BertForPreTraining"), ("roberta", "RobertaForMaskedLM"),
                                              ("albert", "AlbertForPreTraining"), ("gpt", "GPT2LMHeadModel")])
def test_a_lit_ptm_trained_run_exported_gives_the_same_logits_in_hf(recipe, hf_class, tmp_path, cache_dir):
    from lit_ptm.pretrained import load_pretrained

    root = tmp_path / recipe
    run_cli(["fit", *tiny_args(recipe, root, "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0")])
    assert torch.load(root / "last.ckpt", weights_only=True)["lit_ptm"]["family"] == {"gpt": "gpt2"}.get(recipe, recipe)
    out, cls = export_hf(root, tmp_path / "hf")
    assert cls == hf_class
    model = transformers.AutoModelForPreTraining.from_pretrained(out).eval() if recipe != "gpt" else \
        transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == hf_class
    tok = transformers.AutoTokenizer.from_pretrained(out)
    family = {"gpt": "gpt2"}.get(recipe, recipe)
    ids, mask, types = batch(tok, family)
    module = lit_module(load_pretrained(root))
    logits, pair = lit_logits(module, family, ids, mask, types)
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if types is not None else {}))
    expected = hf.logits if hasattr(hf, "logits") and hf.logits is not None else hf.prediction_logits
    real = mask.bool()
    assert (logits[real] - expected[real]).abs().max().item() < 1e-5
    if pair is not None:
        assert (pair - (hf.seq_relationship_logits if recipe == "bert" else hf.sop_logits)).abs().max().item() < 1e-5
    # Encoders: the exported tokenizer adds [CLS] ... [SEP] as HF users expect.
    if recipe != "gpt":
        encoded = tok("a text")["input_ids"]
        assert encoded[0] == tok.cls_token_id and encoded[-1] == tok.sep_token_id


def finetuned_checkpoint(tmp_path, task_cls, family, tok, **kw):
    """A fine-tuning module with random weights, saved as lit_ptm saves it (meta, plain hyper-parameters)."""
    from lit_ptm.hf import config_from_hf

    hf_cfg = {"model_type": family, "vocab_size": tok.vocab_size, "type_vocab_size": 2 if family != "roberta" else 1,
              "pad_token_id": tok.ids.pad, **TINY}
    if family == "albert":
        hf_cfg["embedding_size"] = 32
    if family == "gpt2":
        hf_cfg = {"model_type": "gpt2", "vocab_size": tok.vocab_size, "n_embd": 64, "n_layer": 2, "n_head": 2, "n_inner": 96,
                  "n_positions": 40}
    _, config = config_from_hf(hf_cfg, "test")
    torch.manual_seed(1)
    module = task_cls(config=config, causal=family == "gpt2", **kw)
    module.configure_model()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    run = tmp_path / "run"
    run.mkdir(parents=True)
    torch.save(checkpoint, run / "last.ckpt")
    tok.save(run / "tokenizer.json")
    return module.eval(), run


@pytest.mark.parametrize("family, task", [(f, t) for f in ("bert", "roberta", "albert") for t in ("classify", "regression", "tag", "qa")]
                         + [("gpt2", "tag"), ("gpt2", "qa")])
def test_each_finetuning_head_exports_to_its_hf_class_with_the_same_predictions(family, task, tmp_path):
    from lit_ptm.tasks import ExtractiveQA, SequenceClassification, TokenClassification
    from lit_ptm.tokenizer import train_tokenizer

    tok = train_tokenizer(SENTENCES, "wordpiece", 300)
    if task in ("classify", "regression"):
        kw = {"regression": True} if task == "regression" else {"labels": ["neg", "neutral", "pos"]}
        module, run = finetuned_checkpoint(tmp_path, SequenceClassification, family, tok, **kw)
    elif task == "tag":
        module, run = finetuned_checkpoint(tmp_path, TokenClassification, family, tok, labels=["O", "B-LOC", "I-LOC"])
    else:
        module, run = finetuned_checkpoint(tmp_path, ExtractiveQA, family, tok)
    out, cls = export_hf(run, tmp_path / "hf")
    auto = {"classify": "AutoModelForSequenceClassification", "regression": "AutoModelForSequenceClassification",
            "tag": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering"}[task]
    model = getattr(transformers, auto).from_pretrained(out).eval()
    assert type(model).__name__ == cls
    if task == "classify":
        assert model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"} and model.config.label2id["pos"] == 2
    if task == "regression":
        assert model.config.problem_type == "regression" and model.config.num_labels == 1
    ids = torch.tensor([tok.encode_batch(["the module number 12 defines"])[0][0]])
    ids = torch.cat([torch.tensor([[tok.ids.cls]]), ids, torch.tensor([[tok.ids.sep]])], dim=1)
    segments = family in ("bert", "albert")
    types = torch.zeros_like(ids)
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types if segments else None,
              "lengths": torch.tensor([ids.size(1)])}
    with torch.no_grad():
        hidden = module.encode(batch_)
        hf = model(input_ids=ids, attention_mask=torch.ones_like(ids), **({"token_type_ids": types} if segments else {}))
        if task in ("classify", "regression"):
            ours, theirs = module.head(module.pool(hidden, batch_)), hf.logits
        elif task == "tag":
            ours, theirs = module.head(hidden), hf.logits
        else:
            ours, theirs = module.head(hidden), torch.stack([hf.start_logits, hf.end_logits], -1)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_a_gpt2_classification_run_and_mean_pooling_are_refused_on_export(tmp_path):
    from lit_ptm.tasks import SequenceClassification
    from lit_ptm.tokenizer import train_tokenizer

    tok = train_tokenizer(SENTENCES, "wordpiece", 300)
    _, run = finetuned_checkpoint(tmp_path / "gpt", SequenceClassification, "gpt2", tok, labels=["a", "b"])
    with pytest.raises(HFError, match="GPT-2's sequence-classification head is one linear layer"):
        export_hf(run, tmp_path / "hf1")
    _, run = finetuned_checkpoint(tmp_path / "mean", SequenceClassification, "bert", tok, labels=["a", "b"], pooling="mean")
    with pytest.raises(HFError, match="model.pooling=mean has no HF counterpart"):
        export_hf(run, tmp_path / "hf2")


def test_the_newer_stack_flags_are_never_taken_for_an_hf_family():
    """RMSNorm, unscaled attention, a gated feed-forward, scaled embeddings or LM head: BERT computes none of them."""
    from lit_ptm.hf import family_of
    from lit_ptm.nn import ModelConfig

    assert family_of(ModelConfig(vocab_size=99, type_vocab_size=2)) == "bert"
    for flag in ({"norm": "rms"}, {"scale_attention": False}, {"feed_forward": "gated"}, {"scale_embeddings": True},
                 {"lm_head_scale": True}, {"block_position_embedding": True}):
        assert family_of(ModelConfig(vocab_size=99, type_vocab_size=2, **flag)) is None, flag
        assert family_of(ModelConfig(vocab_size=99, type_vocab_size=0, **flag)) is None, flag


def test_settings_without_an_hf_counterpart_are_refused_on_export(tmp_path, cache_dir):
    root = tmp_path / "shared-attention"
    run_cli(["fit", *tiny_args("bert", root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                               "--model.init_args.config.share", "attention")])
    assert torch.load(root / "last.ckpt", weights_only=True)["lit_ptm"]["family"] is None
    with pytest.raises(HFError, match=r"no HF architecture computes this model exactly; nearest bert.*model.config.share='attention'"):
        export_hf(root, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_clear_errors_for_directories_lit_ptm_cannot_read(tmp_path):
    not_hf = tmp_path / "plain"
    not_hf.mkdir()
    with pytest.raises(HFError, match="is not an HF model directory"):
        from lit_ptm.hf import main

        main(["import", str(not_hf), "--out", str(tmp_path / "run")])
    hf_dir = tmp_path / "t5"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 10}))
    with pytest.raises(HFError, match=r"model_type 't5' is not one lit_ptm maps \(it maps bert, roberta, albert, gpt2\)"):
        read_hf_dir(hf_dir)
    bert = tmp_path / "bert"
    hf_model("bert", bert)
    (bert / "tokenizer.json").rename(bert / "elsewhere.json")
    with pytest.raises(HFError, match="has no tokenizer.json"):
        read_hf_dir(bert)
    # A tokenizer whose vocabulary does not fit the embeddings.
    other = tmp_path / "other"
    hf_model("roberta", other)
    (other / "tokenizer.json").replace(bert / "tokenizer.json")
    (other / "tokenizer_config.json").replace(bert / "tokenizer_config.json")
    with pytest.raises(HFError, match=r"tokenizer.json has \d+ tokens, more than the model's \d+ embeddings"):
        read_hf_dir(bert)
    # A role the objective needs and the tokenizer lacks: masked LM on GPT-2's tokenizer.
    gpt = tmp_path / "gpt2"
    hf_model("gpt2", gpt)
    from lit_ptm.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match=r"has no cls / sep / mask token, which the MaskedLM objective needs"):
        run_cli(["fit", *tiny_args("bert", tmp_path / "mlm", "--data.init_args.tokenizer", str(gpt / "tokenizer.json"),
                                   "--trainer.max_steps", "1")])


def test_continued_pretraining_and_fine_tuning_from_an_hf_directory(tmp_path, cache_dir):
    """An HF BERT whose tokenizer was trained on the built-in corpus: the MLM recipe continues pretraining
    it (the loss falls), `import` makes a run that `test` and fine-tuning accept."""
    from lit_ptm.data.corpus import iter_documents

    builtin = cache_dir / "builtin_corpus.txt"
    if not builtin.is_file():
        run_cli(["validate", *tiny_args("bert", tmp_path / "warm", "--trainer.limit_val_batches", "1")])
    from tokenizers import Tokenizer as Rust
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    rust = Rust(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.train_from_iterator((s for d in iter_documents(builtin) for s in d),
                             trainers.WordPieceTrainer(vocab_size=1500, special_tokens=list(ROLES["bert"].values())))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, **ROLES["bert"])
    hf_dir = tmp_path / "hf-bert"
    tok.save_pretrained(hf_dir)
    config = transformers.BertConfig(vocab_size=len(tok), type_vocab_size=2, pad_token_id=tok.pad_token_id,
                                     **{**TINY, "max_position_embeddings": 128})
    torch.manual_seed(0)
    transformers.BertForPreTraining(config).save_pretrained(hf_dir)
    args = ["--model.init_args.pretrained", str(hf_dir), "--trainer.limit_val_batches", "5"]
    root = tmp_path / "continued"
    before = run_cli(["validate", *tiny_args("bert", tmp_path / "v", *args)]).trainer.callback_metrics["val/mlm_loss"].item()
    cli = run_cli(["fit", *tiny_args("bert", root, *args, "--trainer.max_steps", "60", "--trainer.val_check_interval", "60")])
    assert cli.model.config.hidden_size == 64 and cli.datamodule.tokenizer.vocab_size == len(tok)
    assert cli.trainer.callback_metrics["val/mlm_loss"].item() < before - 0.5
    # import -> a run directory: test it, fine-tune it on the demo task.
    run = import_hf(hf_dir, tmp_path / "imported")
    tested = run_cli(["test", "--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(tmp_path / "t"),
                      "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false",
                      "--ckpt_path", str(run / "last.ckpt")])
    assert tested.trainer.callback_metrics["test/loss"].item() > 0
    fine = run_cli(["fit", "--config", str(CONFIGS / "finetune/classify.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"),
                    "--model.init_args.pretrained", str(run), "--trainer.default_root_dir", str(tmp_path / "ft"),
                    "--trainer.max_epochs", "1", "--data.init_args.train_examples", "64", "--trainer.enable_progress_bar", "false",
                    "--trainer.log_every_n_steps", "1"])
    assert fine.trainer.global_step > 0 and scalars(tmp_path / "ft", "train/loss")
    with pytest.raises(Exception, match="holds weights only"):
        run_cli(["fit", *tiny_args("bert", tmp_path / "r", "--ckpt_path", str(run / "last.ckpt"))])
    # Fine-tuning straight from the HF directory, its tokenizer by role.
    direct = run_cli(["fit", "--config", str(CONFIGS / "finetune/classify.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"),
                      "--model.init_args.pretrained", str(hf_dir), "--trainer.default_root_dir", str(tmp_path / "ft-hf"),
                      "--trainer.max_steps", "2", "--data.init_args.train_examples", "64", "--trainer.enable_progress_bar", "false"])
    assert direct.trainer.global_step == 2 and direct.model.started_from == str(hf_dir)
    assert direct.datamodule.tokenizer.ids.cls == tok.cls_token_id


def test_import_and_export_are_lit_ptm_subcommands(tmp_path):
    from conftest import run_module

    hf_model("roberta", tmp_path / "hf")
    r = run_module(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    assert r.returncode == 0 and "--model.pretrained" in r.stdout, r.stderr[-2000:]
    r = run_module(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    assert r.returncode == 2 and "already holds a run" in r.stderr and "Traceback" not in r.stderr
    r = run_module(["export", str(tmp_path / "run"), "--out", str(tmp_path / "back")])
    assert r.returncode == 0 and "RobertaForMaskedLM" in r.stdout, r.stderr[-2000:]
    assert (tmp_path / "back" / "model.safetensors").is_file() and (tmp_path / "back" / "tokenizer.json").is_file()
    r = run_module(["export", str(tmp_path / "run"), "--out", str(tmp_path / "back")])
    assert r.returncode == 2 and "exists and is not empty" in r.stderr


def test_a_tf_era_bert_directory_reads_like_a_released_one(tmp_path):
    """bert-base-uncased as released: pytorch_model.bin (read with weights_only=True) whose LayerNorms are
    gamma / beta, and a tokenizer_config.json that names no special tokens (BertTokenizer's defaults hold)."""
    from lit_ptm.pretrained import load_pretrained

    hf_dir = tmp_path / "bert"
    model, tok = hf_model("bert", hf_dir)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    assert any(k.endswith("gamma") for k in state)
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    (hf_dir / "special_tokens_map.json").unlink(missing_ok=True)
    ours = Tokenizer.load(hf_dir / "tokenizer.json")
    assert (ours.ids.cls, ours.ids.sep, ours.ids.mask, ours.ids.pad) == (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id,
                                                                          tok.pad_token_id)
    ids, mask, types = batch(tok, "bert")
    logits, pair = lit_logits(lit_module(load_pretrained(hf_dir)), "bert", ids, mask, types)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert (logits[mask.bool()] - out.prediction_logits[mask.bool()]).abs().max().item() < 1e-5


def test_hf_settings_lit_ptm_cannot_compute_exactly_are_refused_on_import(tmp_path):
    for family, overrides, message in (("roberta", {"hidden_act": "relu"}, "RoBERTa's LM head applies gelu"),
                                       ("bert", {"is_decoder": True}, "is_decoder=true"),
                                       ("albert", {"num_hidden_groups": 2, "num_hidden_layers": 4}, "num_hidden_groups=2")):
        hf_model(family, tmp_path / family, **overrides)
        with pytest.raises(HFError, match=message):
            read_hf_dir(tmp_path / family)
    # A bare encoder (no MLM head) is no MLM run to import; --model.pretrained takes it (a head starts fresh).
    bare = tmp_path / "bare"
    hf_tokenizer("bert", bare)
    transformers.BertModel(transformers.BertConfig(vocab_size=len(Tokenizer.load(bare / "tokenizer.json").hf.get_vocab()), **TINY)).save_pretrained(bare)
    with pytest.raises(HFError, match="holds no MLM head"):
        import_hf(bare, tmp_path / "run")
    assert read_hf_dir(bare).state_dict["transformer.blocks.1.ffn.up.weight"].shape == (96, 64)


def test_roles_from_the_model_type_when_the_directory_names_none(tmp_path):
    hf_dir = tmp_path / "roberta"
    _, tok = hf_model("roberta", hf_dir)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (hf_dir / name).unlink(missing_ok=True)
    ours = Tokenizer.load(hf_dir / "tokenizer.json")
    assert ours.vocab_size == len(tok) and (ours.ids.cls, ours.ids.mask, ours.ids.pad) == (tok.cls_token_id, tok.mask_token_id, tok.pad_token_id)


def test_extractive_qa_names_the_tokens_gpt2_lacks(tmp_path, cache_dir):
    """QA windows are [CLS] question [SEP] context [SEP] for causal models too: GPT-2's tokenizer has neither."""
    hf_model("gpt2", tmp_path / "gpt2")
    from lit_ptm.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="has no cls / sep token, which fine-tuning a causal model needs"):
        run_cli(["fit", "--config", str(CONFIGS / "finetune/qa.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"),
                 "--model.init_args.pretrained", str(tmp_path / "gpt2"), "--trainer.default_root_dir", str(tmp_path / "qa"),
                 "--trainer.enable_progress_bar", "false"])
