"""HF transformers interoperability: logits parity on import and export, exact round trips, tokenizers
by role, fine-tuning heads, and clear errors. Random tiny HF models are built and saved by the tests."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the test extra installs it; CI runs these

from conftest import CONFIGS, random_run, run_cli, scalars, tiny_args  # noqa: E402
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
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    "bart": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "cls_token": "<s>",
             "sep_token": "</s>", "mask_token": "<mask>"},
    "xlnet": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<cls>", "sep_token": "<sep>",
              "pad_token": "<pad>", "mask_token": "<mask>"},  # xlnet-base-cased's order
    "mpnet": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "[UNK]", "cls_token": "<s>",
              "sep_token": "</s>", "mask_token": "<mask>"},  # <pad> at 1, as HF's MPNet reads it
}
T5_SENTINELS = [f"<extra_id_{i}>" for i in range(5)]
MAX_DIFF: dict[str, float] = {}  # the largest logit difference each test measured (printed with -s)


def hf_tokenizer(family, directory):
    """A tokenizer with the family's own special tokens (in its own order), saved by HF's save_pretrained."""
    from tokenizers import Tokenizer as Rust
    from tokenizers import models, pre_tokenizers, trainers

    specials = list(dict.fromkeys(ROLES[family].values()))
    if family in ("t5", "xlnet"):  # SentencePiece-like (Unigram); T5's sentinels last, as its tokenizer has them
        rust = Rust(models.Unigram())
        rust.pre_tokenizer = pre_tokenizers.Metaspace()
        rust.train_from_iterator(SENTENCES, trainer=trainers.UnigramTrainer(vocab_size=94, special_tokens=specials, unk_token="<unk>"))
        sentinels = {"additional_special_tokens": T5_SENTINELS} if family == "t5" else {}
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, **sentinels, **ROLES[family])
        fast.save_pretrained(directory)
        return fast
    if family in ("roberta", "gpt2", "bart"):
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
    elif family == "mpnet":
        config = transformers.MPNetConfig(**{"vocab_size": V, "pad_token_id": tok.pad_token_id, **TINY, "max_position_embeddings": 42,
                                             **overrides})
        model = transformers.MPNetForMaskedLM(config)
    elif family == "xlnet":  # 4 heads: the [H, heads, head_size] layout matters; no memory
        config = transformers.XLNetConfig(**{"vocab_size": V, "d_model": 64, "n_layer": 2, "n_head": 4, "d_inner": 96, "mem_len": None,
                                             "pad_token_id": tok.pad_token_id, **overrides})
        model = transformers.XLNetLMHeadModel(config)
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


def vocab_order(ours: Tokenizer, theirs) -> torch.Tensor:
    """[V]: lit_ptm's id of each HF id (the identity, but for an exported MPNet: its [PAD] and [UNK] trade ids)."""
    return torch.tensor([ours.hf.token_to_id(t) for t in theirs.convert_ids_to_tokens(list(range(len(theirs))))])


def lit_logits(module, family, ids, mask, types):
    with torch.no_grad():
        batch = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
        hidden = module.encode(batch).hidden
        logits = module.lm_head(hidden)
        pair = module.pair_head(hidden) if getattr(module, "pair_task", "none") != "none" else None
    return logits, pair


def lit_module(pretrained):
    from lit_ptm import objectives
    from lit_ptm.objectives import MaskedLM

    if pretrained.objective in ("CausalLM", "XLNet", "MPNet"):
        module = getattr(objectives, pretrained.objective)(pretrained.config)
    else:
        pair = "nsp" if "pair_head.pooler.weight" in pretrained.state_dict and pretrained.config.embedding_size is None else (
            "sop" if "pair_head.pooler.weight" in pretrained.state_dict else "none")
        module = MaskedLM(pretrained.config, pair_task=pair)
    module.configure_model()
    # A SpanBERT run: its stack and MLM head (the boundary head has no HF counterpart).
    module.load_state_dict({k: v for k, v in pretrained.state_dict.items() if not k.startswith("sbo_head.")}, strict=True)
    return module.eval()


VARIANTS = [  # beyond each family's defaults: settings whose mapping differs
    ("bert", {"tie_word_embeddings": False}), ("gpt2", {"tie_word_embeddings": False}), ("bert", {"type_vocab_size": 1}),
    ("bert", {"hidden_act": "relu", "layer_norm_eps": 1e-7}), ("roberta", {"type_vocab_size": 2}), ("roberta", {"tie_word_embeddings": False}),
    ("albert", {"embedding_size": 64}), ("albert", {"num_hidden_groups": 2}), ("gpt2", {"n_inner": None, "activation_function": "relu"}),
    ("xlnet", {"tie_word_embeddings": False}), ("xlnet", {"ff_activation": "relu", "layer_norm_eps": 1e-7}),
    ("mpnet", {"tie_word_embeddings": False}),
]


@pytest.mark.parametrize("family, overrides", [(f, {}) for f in ("bert", "roberta", "albert", "gpt2", "xlnet", "mpnet")] + VARIANTS,
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
    MAX_DIFF[f"import {family} {overrides}"] = (logits[real] - expected[real]).abs().max().item()
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
                                              ("albert", "AlbertForPreTraining"), ("gpt", "GPT2LMHeadModel"),
                                              ("spanbert", "BertForMaskedLM"), ("xlnet", "XLNetLMHeadModel"),
                                              ("mpnet", "MPNetForMaskedLM"), ("unilm", "BertForPreTraining")])
def test_a_lit_ptm_trained_run_exported_gives_the_same_logits_in_hf(recipe, hf_class, tmp_path, cache_dir):
    from lit_ptm.pretrained import load_pretrained

    root = tmp_path / recipe
    run_cli(["fit", *tiny_args(recipe, root, "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0")])
    family = {"gpt": "gpt2", "spanbert": "bert", "unilm": "bert"}.get(recipe, recipe)
    assert torch.load(root / "last.ckpt", weights_only=True)["lit_ptm"]["family"] == family
    out, cls = export_hf(root, tmp_path / "hf")
    assert cls == hf_class
    auto = {"gpt": transformers.AutoModelForCausalLM, "spanbert": transformers.AutoModelForMaskedLM}.get(recipe, transformers.AutoModelForPreTraining)
    model = auto.from_pretrained(out).eval()
    assert type(model).__name__ == hf_class
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids, mask, types = batch(tok, family)
    module = lit_module(load_pretrained(root))
    order = vocab_order(Tokenizer.load(root / "tokenizer.json"), tok)  # HF id -> lit_ptm id
    logits, pair = lit_logits(module, family, order[ids], mask, types)
    logits = logits[..., order]
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if types is not None else {}))
    expected = hf.logits if hasattr(hf, "logits") and hf.logits is not None else hf.prediction_logits
    real = mask.bool()
    MAX_DIFF[f"export {recipe} recipe run"] = (logits[real] - expected[real]).abs().max().item()
    assert (logits[real] - expected[real]).abs().max().item() < 1e-5
    if pair is not None:
        assert (pair - (hf.seq_relationship_logits if family == "bert" else hf.sop_logits)).abs().max().item() < 1e-5
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
    if family == "xlnet":
        hf_cfg = {"model_type": "xlnet", "vocab_size": tok.vocab_size, "d_model": 64, "n_layer": 2, "n_head": 4, "d_inner": 96}
    _, config = config_from_hf(hf_cfg, "test")
    module, run, _ = random_run(tmp_path, tok, task_cls, config=config, causal=family == "gpt2", **kw)
    return module, run


@pytest.mark.parametrize("family, task", [(f, t) for f in ("bert", "roberta", "albert", "mpnet") for t in ("classify", "regression", "tag", "qa")]
                         + [("gpt2", "tag"), ("gpt2", "qa"), ("xlnet", "classify"), ("xlnet", "tag"), ("xlnet", "qa")])
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
    """RMSNorm, unscaled attention, a gated feed-forward, scaled embeddings or LM head, MPNet's relative bias,
    attention projections without biases: BERT computes none of them (and only MPNet has the bias, on a
    table without token types); the XLNet and MPNet recipes are XLNet and MPNet, never another family."""
    import yaml

    from lit_ptm.hf import family_of
    from lit_ptm.nn import ModelConfig

    assert family_of(ModelConfig(vocab_size=99, type_vocab_size=2)) == "bert"
    for flag in ({"norm": "rms"}, {"scale_attention": False}, {"feed_forward": "gated"}, {"scale_embeddings": True},
                 {"lm_head_scale": True}, {"block_position_embedding": True}, {"relative_attention_bias": True},
                 {"attention_bias": False}):
        assert family_of(ModelConfig(vocab_size=99, type_vocab_size=2, **flag)) is None, flag
        assert family_of(ModelConfig(vocab_size=99, type_vocab_size=0, **flag)) == ("mpnet" if "relative_attention_bias" in flag else None), flag
    assert family_of(ModelConfig(vocab_size=99, norm_position="pre", final_norm=True, embedding_norm=False, lm_head_transform=False,
                                 lm_head_bias=False, norm="rms")) is None
    for recipe in ("xlnet", "mpnet"):  # an MPNet was once taken for roberta, whose export dropped its relative bias
        config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())["model"]["init_args"]["config"]
        assert family_of(ModelConfig(vocab_size=99, **config)) == recipe


def test_xlnet_and_mpnet_are_told_apart_from_the_other_families():
    """XLNet's relative attention, attention projections without biases and MPNet's buckets are theirs alone."""
    from dataclasses import replace

    from lit_ptm.hf import family_of, mismatches
    from lit_ptm.nn import ModelConfig

    xlnet = ModelConfig(vocab_size=99, lm_head_bias=True, **XLNET_FLAGS)
    mpnet = ModelConfig(vocab_size=99, **MPNET_FLAGS)
    bert = ModelConfig(vocab_size=99, type_vocab_size=2)
    assert (family_of(xlnet), family_of(mpnet), family_of(bert)) == ("xlnet", "mpnet", "bert")
    for config, flag in ((xlnet, {"attention_bias": None}), (xlnet, {"embedding_norm": True}), (xlnet, {"lm_head_transform": True}),
                         (xlnet, {"norm_position": "pre", "final_norm": True}), (mpnet, {"relative_buckets": 64}),
                         (mpnet, {"activation": "relu"}), (mpnet, {"attention_bias": False}), (bert, {"relative_attention_bias": True}),
                         (bert, {"attention_bias": False}), (replace(bert, type_vocab_size=0), {"position_embedding": "xlnet_relative"})):
        assert family_of(replace(config, **flag)) is None, flag
    assert family_of(replace(mpnet, relative_attention_bias=False)) == "roberta"  # MPNet without its buckets: RoBERTa's encoder
    assert "model.config.relative_attention_bias=False (mpnet has True)" in mismatches(bert, "mpnet")
    assert "model.config.attention_bias=True (xlnet has False)" in mismatches(replace(xlnet, attention_bias=True), "xlnet")
    assert "model.config.position_embedding='xlnet_relative' (roberta has 'learned')" in mismatches(xlnet, "roberta")


def one_step_family(recipe, root, *flags):
    """One training step of ``recipe`` + tiny.yaml into ``root``: the HF family its checkpoint records."""
    run_cli(["fit", *tiny_args(recipe, root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *flags)])
    return torch.load(root / "last.ckpt", weights_only=True)["lit_ptm"]["family"]


def test_settings_without_an_hf_counterpart_are_refused_on_export(tmp_path, cache_dir):
    root = tmp_path / "shared-attention"
    assert one_step_family("bert", root, "--model.init_args.config.share", "attention") is None
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
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "deberta", "vocab_size": 10}))
    with pytest.raises(HFError, match=r"model_type 'deberta' is not one lit_ptm maps \(it maps bert, roberta, albert, gpt2, t5, bart, "
                       r"xlnet, mpnet\)"):
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
                                       ("albert", {"num_hidden_groups": 2, "num_hidden_layers": 4}, "num_hidden_groups=2"),
                                       ("xlnet", {"attn_type": "uni"}, r"attn_type='uni' is not mapped \(a causal Transformer-XL"),
                                       ("xlnet", {"bi_data": True}, r"bi_data=True is not mapped"),
                                       ("xlnet", {"clamp_len": 8}, r"clamp_len=8 is not mapped \(relative distances clamped"),
                                       ("xlnet", {"ff_activation": "gelu_fast"}, r"ff_activation='gelu_fast' has no exact counterpart"),
                                       ("mpnet", {"relative_attention_num_buckets": 64}, r"relative_attention_num_buckets=64 is not mapped"),
                                       ("mpnet", {"hidden_act": "relu"}, "MPNet's LM head applies gelu")):
        directory = tmp_path / f"{family}-{'-'.join(overrides)}"
        hf_model(family, directory, **overrides)
        with pytest.raises(HFError, match=message):
            read_hf_dir(directory)
    # XLNet's clamp_len 0 or -1 clamps nothing; a bare XLNetModel (no lm_loss) is no XLNet run to import.
    hf_model("xlnet", tmp_path / "unclamped", clamp_len=0)
    assert read_hf_dir(tmp_path / "unclamped").heads == ("plm",)
    bare_xlnet = tmp_path / "bare-xlnet"
    xlnet_tok = hf_tokenizer("xlnet", bare_xlnet)
    bare_config = transformers.XLNetConfig(vocab_size=len(xlnet_tok), d_model=32, n_layer=1, n_head=2, d_inner=48)
    transformers.XLNetModel(bare_config).save_pretrained(bare_xlnet)
    with pytest.raises(HFError, match=r"holds no LM head \(lm_loss\)"):
        import_hf(bare_xlnet, tmp_path / "run-xlnet")
    # HF's MPNet pads with id 1 whatever its tokenizer says: a tokenizer with another padding id is refused.
    mpnet = tmp_path / "mpnet-pad"
    hf_model("mpnet", mpnet)
    written = json.loads((mpnet / "tokenizer_config.json").read_text())
    (mpnet / "tokenizer_config.json").write_text(json.dumps({**written, "pad_token": "<mask>"}))
    (mpnet / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(HFError, match=r"its padding token has id \d+, but HF's MPNet takes id 1 for padding"):
        read_hf_dir(mpnet)
    # A bare encoder (no MLM head) is no MLM run to import; --model.pretrained takes it (a head starts fresh).
    bare = tmp_path / "bare"
    hf_tokenizer("bert", bare)
    transformers.BertModel(transformers.BertConfig(vocab_size=len(Tokenizer.load(bare / "tokenizer.json").hf.get_vocab()), **TINY)).save_pretrained(bare)
    with pytest.raises(HFError, match="holds no MLM head"):
        import_hf(bare, tmp_path / "run")
    assert read_hf_dir(bare).state_dict["transformer.blocks.1.ffn.up.weight"].shape == (96, 64)


@pytest.mark.parametrize("family", ["roberta", "xlnet", "mpnet"])
def test_roles_from_the_model_type_when_the_directory_names_none(family, tmp_path):
    hf_dir = tmp_path / family
    _, tok = hf_model(family, hf_dir)
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


# -- permutation LMs: XLNet (both streams) and MPNet (its encoder) --------------------------------------------
XLNET_FLAGS = dict(position_embedding="xlnet_relative", attention_bias=False, embedding_norm=False, type_vocab_size=0,
                   lm_head_transform=False)
MPNET_FLAGS = dict(relative_attention_bias=True, position_offset=2, max_position_embeddings=42, type_vocab_size=0)
UNKNOWN = "the module ☃ defines ☃ and returns 36 values."  # ☃ is no token of theirs: [UNK]


def xlnet_batch(tok, segments: bool):
    """XLNetCollator's batch of three windows ([CLS] text [SEP]: odd and even lengths, padded rows); ``segments``:
    token_type_ids, the second half of each row in segment 1."""
    from lit_ptm.data.collate import XLNetCollator

    texts = ["the module number 12 defines the name 5, and returns 36 values.", "Hi there, module 7!", "the name 3 returns 9."]
    samples = [{"ids": torch.tensor([tok.ids.cls, *ids, tok.ids.sep]), "word_start": torch.tensor([True, *starts, True]),
                "document": torch.zeros(len(ids) + 2, dtype=torch.long), "epoch": 0, "index": i}
               for i, (ids, starts) in enumerate(tok.encode_batch(texts))]
    assert {len(s["ids"]) % 2 for s in samples} == {0, 1}
    batch_ = XLNetCollator(tok.ids, seed=3, partial_prediction=2)(samples)
    assert not batch_["attention_mask"].all() and (batch_["labels"] == -100).any()  # padded rows and padded query slots
    if segments:
        B, L = batch_["input_ids"].shape
        batch_["token_type_ids"] = (torch.arange(L) >= L // 2).long().expand(B, L).contiguous()
    return batch_


def xlnet_diffs(module, hf, batch_) -> tuple[float, float]:
    """Largest logit differences to HF's XLNetLMHeadModel: the content stream (no perm_mask) at real tokens, and the
    query stream (perm_mask, target_mapping = one_hot(target_positions)) at the predicted slots. (The padded slots,
    label -100, all point at position 0: HF's target_mapping scatters the queries onto their positions and adds
    those that share one, lit_ptm's query rows stay apart.)"""
    ids, mask, types = batch_["input_ids"], batch_["attention_mask"], batch_.get("token_type_ids")
    inputs = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
    with torch.no_grad():
        content = module.lm_head(module.encode(inputs).hidden)
        query = module.lm_head(module.two_streams(batch_).query_hidden)
        hf_inputs = {**inputs, "attention_mask": mask.long()}
        hf_content = hf(**hf_inputs).logits
        target_mapping = torch.nn.functional.one_hot(batch_["target_positions"], ids.size(1)).float()
        hf_query = hf(**hf_inputs, perm_mask=batch_["perm_mask"].float(), target_mapping=target_mapping).logits
    assert query.shape == hf_query.shape == (*batch_["target_positions"].shape, content.size(-1))
    predicted = batch_["labels"] != -100
    return (content - hf_content)[mask].abs().max().item(), (query - hf_query)[predicted].abs().max().item()


@pytest.mark.parametrize("segments", [False, True], ids=["no-segments", "segments"])
def test_xlnet_both_streams_match_hf_on_import_and_export(segments, tmp_path):
    """XLNetLMHeadModel <-> the XLNet objective: the content stream as HF without perm_mask, the query stream as HF
    with perm_mask and target_mapping from XLNetCollator's batch, for an imported HF model and an exported lit_ptm run."""
    from lit_ptm import objectives
    from lit_ptm.nn import ModelConfig
    from lit_ptm.pretrained import load_pretrained
    from lit_ptm.tokenizer import train_tokenizer

    hf_dir = tmp_path / "hf"
    hf, _ = hf_model("xlnet", hf_dir)
    module = lit_module(load_pretrained(hf_dir))
    content, query = xlnet_diffs(module, hf, xlnet_batch(Tokenizer.load(hf_dir / "tokenizer.json"), segments))
    MAX_DIFF[f"import xlnet content segments={segments}"], MAX_DIFF[f"import xlnet query segments={segments}"] = content, query
    assert content < 1e-5 and query < 1e-5
    run = import_hf(hf_dir, tmp_path / "imported")
    assert "--model.mem_len M adds Transformer-XL's memory" in (run / "config.yaml").read_text()
    # A lit_ptm XLNet run (lit_ptm's tokenizer, an untied head) exported: the same logits in HF.
    tok = train_tokenizer(SENTENCES, "unigram", 300, lowercase=False)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, dropout=0.0,
                         attention_dropout=0.0, tie_word_embeddings=False, norm_eps=1e-7, **XLNET_FLAGS)
    module, run, checkpoint = random_run(tmp_path / "lit", tok, objectives.XLNet, config=config)
    assert checkpoint["lit_ptm"]["family"] == "xlnet"
    out, cls = export_hf(run, tmp_path / "exported")
    assert cls == "XLNetLMHeadModel"
    exported = transformers.AutoModelForPreTraining.from_pretrained(out).eval()
    assert type(exported).__name__ == cls and exported.lm_loss.weight is not exported.transformer.word_embedding.weight
    content, query = xlnet_diffs(module, exported, xlnet_batch(tok, segments))
    MAX_DIFF[f"export xlnet content segments={segments}"], MAX_DIFF[f"export xlnet query segments={segments}"] = content, query
    assert content < 1e-5 and query < 1e-5


def test_xlnets_memory_matches_hfs_mems(tmp_path):
    """Transformer-XL's recurrence (``model.mem_len``) against HF's XLNet with ``mems``: after a first window, the
    content stream and the query stream (perm_mask, target_mapping, segments, a padded row) of the next window
    give HF's logits, and the memory handed on is HF's."""
    from lit_ptm.nn import AttentionMask
    from lit_ptm.pretrained import load_pretrained

    hf_dir = tmp_path / "hf"
    hf, _ = hf_model("xlnet", hf_dir)
    hf.transformer.mem_len = 5
    module = lit_module(load_pretrained(hf_dir))
    module.mem_len = 5
    batch_ = xlnet_batch(Tokenizer.load(hf_dir / "tokenizer.json"), segments=True)
    ids, mask, types = batch_["input_ids"], batch_["attention_mask"], batch_["token_type_ids"]
    first = torch.randint(5, hf.config.vocab_size, (ids.size(0), 9), generator=torch.Generator().manual_seed(1))
    stack = module.stack()
    with torch.no_grad():
        mems = hf.transformer(first, use_mems=True).mems
        previous = stack(first, memory_length=5)
        module.memory["eval"] = (previous.memory, torch.ones(ids.size(0), 5, dtype=torch.bool))
        assert max((m.transpose(0, 1) - ours).abs().max().item() for m, ours in zip(mems, previous.memory)) < 1e-5
        hf_inputs = {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": types, "mems": mems, "use_mems": True}
        hf_content = hf(**hf_inputs)
        content = stack(ids, AttentionMask(padding=mask), token_type_ids=types, memory=previous.memory, memory_length=5)
        assert (module.lm_head(content.hidden) - hf_content.logits)[mask].abs().max().item() < 1e-5
        real = torch.cat([torch.ones(ids.size(0), 5, dtype=torch.bool), mask], 1)[:, -5:]  # padding's states are not HF's (never read)
        assert max((m.transpose(0, 1) - ours)[real].abs().max().item() for m, ours in zip(hf_content.mems, content.memory)) < 1e-5
        target_mapping = torch.nn.functional.one_hot(batch_["target_positions"], ids.size(1)).float()
        hf_query = hf(**hf_inputs, perm_mask=batch_["perm_mask"].float(), target_mapping=target_mapping).logits
        query = module.lm_head(module.two_streams(batch_).query_hidden)
        predicted = batch_["labels"] != -100
        MAX_DIFF["xlnet with memory, query"] = diff = (query - hf_query)[predicted].abs().max().item()
        assert diff < 1e-5
        # Without the memory, the same window gives other logits: the comparison above is not vacuous.
        module.memory.clear()
        assert (module.lm_head(module.two_streams(batch_).query_hidden) - hf_query)[predicted].abs().max().item() > 1e-3


def test_an_exported_mpnet_pads_with_id_1_and_gives_the_same_logits_on_unknown_tokens(tmp_path):
    """lit_ptm's [PAD] is 0 and [UNK] 1; HF's MPNet pads with id 1 whatever its tokenizer says (its positions skip
    every id 1). Export trades the two ids (token table, LM bias, tokenizer); import keeps HF's ids (any padding id
    serves lit_ptm), so exporting the import again writes the same model."""
    from lit_ptm import objectives
    from lit_ptm.nn import ModelConfig
    from lit_ptm.pretrained import load_pretrained
    from lit_ptm.tokenizer import train_tokenizer

    tok = train_tokenizer(SENTENCES, "wordpiece", 300)
    assert (tok.ids.pad, tok.ids.unk) == (0, 1)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, dropout=0.0,
                         attention_dropout=0.0, **MPNET_FLAGS)
    module, run, checkpoint = random_run(tmp_path / "lit", tok, objectives.MPNet, config=config)
    assert checkpoint["lit_ptm"]["family"] == "mpnet"
    out, cls = export_hf(run, tmp_path / "hf")
    assert cls == "MPNetForMaskedLM"
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf_tok.pad_token_id, hf_tok.unk_token_id, hf.config.pad_token_id) == (1, 0, 1)
    enc = hf_tok([UNKNOWN, "Hi!"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (ids[0] == hf_tok.unk_token_id).sum() == 2 and ids[0, 0] == hf_tok.cls_token_id and not mask.all()
    order = vocab_order(tok, hf_tok)  # HF id -> lit_ptm id: 0 and 1 traded
    assert order[:3].tolist() == [1, 0, 2] and torch.equal(order[2:], torch.arange(2, tok.vocab_size))
    real = mask.bool()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        ours = module.lm_head(module.encode({"input_ids": order[ids], "attention_mask": mask}).hidden)[..., order]
    MAX_DIFF["export mpnet, text with [UNK]"] = (ours - theirs)[real].abs().max().item()
    assert (ours - theirs)[real].abs().max().item() < 1e-5
    # Back in lit_ptm: HF's ids, the same logits; exported again, the same HF model.
    again = lit_module(load_pretrained(import_hf(out, tmp_path / "back")))
    with torch.no_grad():
        back = again.lm_head(again.encode({"input_ids": ids, "attention_mask": mask}).hidden)
    assert (back - theirs)[real].abs().max().item() < 1e-5
    twice, _ = export_hf(tmp_path / "back", tmp_path / "hf-again")
    first, second = hf.state_dict(), transformers.MPNetForMaskedLM.from_pretrained(twice).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert transformers.AutoTokenizer.from_pretrained(twice)(UNKNOWN)["input_ids"] == ids[0].tolist()


@pytest.mark.parametrize("family", ["xlnet", "mpnet"])
def test_continued_pretraining_and_fine_tuning_from_an_hf_permutation_lm(family, tmp_path, cache_dir):
    """``--model.pretrained HF_DIR``: the XLNet / MPNet objective continues from HF's weights (its LM head, XLNet's
    mask_emb); a fine-tuning task takes the encoder, whose states are XLNetModel's / MPNetModel's; the recipe
    continues pretraining from the imported run through the CLI."""
    from lit_ptm import objectives
    from lit_ptm.tasks import TokenClassification

    hf_dir = tmp_path / "hf"
    hf, tok = hf_model(family, hf_dir)
    objective = {"xlnet": "XLNet", "mpnet": "MPNet"}[family]
    continued = getattr(objectives, objective)(pretrained=str(hf_dir))
    continued.configure_model()
    ids, mask, _ = batch(tok, family)
    with torch.no_grad():
        ours = continued.eval().lm_head(continued.encode({"input_ids": ids, "attention_mask": mask}).hidden)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert (ours - theirs)[mask.bool()].abs().max().item() < 1e-5 and continued.started_from == str(hf_dir)
    if family == "xlnet":
        assert torch.equal(continued.query_embedding, hf.transformer.mask_emb[0, 0])
    task = TokenClassification(pretrained=str(hf_dir), labels=["O", "B-X", "I-X"])
    task.configure_model()
    with torch.no_grad():
        states = task.eval().encode({"input_ids": ids, "attention_mask": mask})
        base = hf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    MAX_DIFF[f"fine-tuning encoder {family}"] = (states - base)[mask.bool()].abs().max().item()
    assert (states - base)[mask.bool()].abs().max().item() < 1e-5
    # `lit-ptm import`, then the recipe continues from the run (its LM head and XLNet's query_embedding included).
    run = import_hf(hf_dir, tmp_path / "imported")
    args = ["--model.init_args.pretrained", str(run), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--data.init_args.seq_length", "32"]
    cli = run_cli(["fit", *tiny_args(family, tmp_path / "continued", *args)])
    assert cli.trainer.global_step == 2 and cli.model.started_from == str(run / "last.ckpt")
    assert cli.model.config.hidden_size == 64 and cli.datamodule.tokenizer.vocab_size == len(tok)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.load(tmp_path / "continued" / "last.ckpt", weights_only=True)["lit_ptm"]["family"] == family


# -- encoder-decoders: T5 (v1.0, v1.1 / flan-t5) and BART ----------------------------------------------------
T5_TINY = {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 3,
           "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12}  # short inputs reach the log buckets
BART_TINY = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 3, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
             "encoder_ffn_dim": 48, "decoder_ffn_dim": 48, "max_position_embeddings": 40}


def hf_seq2seq(family, directory, seed=0, released=False, **overrides):
    """A random tiny T5ForConditionalGeneration / BartForConditionalGeneration, saved with its tokenizer, as HF reads it back.
    ``tie_word_embeddings=False``: a head of its own (flan-t5); ``released``: config.json as flan-t5's on the hub
    (tie_word_embeddings false, no scale_decoder_outputs), not as transformers 5 writes it."""
    torch.manual_seed(seed)
    tok = hf_tokenizer(family, directory)
    V = len(tok)
    if family == "t5":
        config = transformers.T5Config(**{"vocab_size": V, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                                          "decoder_start_token_id": tok.pad_token_id, **T5_TINY, **overrides})
        model = transformers.T5ForConditionalGeneration(config)
    else:
        config = transformers.BartConfig(**{"vocab_size": V, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                                            "eos_token_id": tok.eos_token_id, "decoder_start_token_id": tok.eos_token_id,
                                            "forced_eos_token_id": None, **BART_TINY, **overrides})
        model = transformers.BartForConditionalGeneration(config)
    if overrides.get("tie_word_embeddings") is False and model.lm_head.weight is model.get_input_embeddings().weight:
        model.lm_head.weight = torch.nn.Parameter(torch.empty(V, config.d_model))  # transformers 5 ties T5's head whatever the config
        model.all_tied_weights_keys.pop("lm_head.weight")
    with torch.no_grad():  # every parameter random (norms, relative biases, final_logits_bias too)
        for p in [*model.parameters(), *(b for n, b in model.named_buffers() if n == "final_logits_bias")]:
            p.normal_(0, 0.2)
        for stack in (model.get_encoder(), model.get_decoder()):  # one table (transformers 5 keeps three for an untied BART)
            stack.embed_tokens.weight.copy_(model.get_input_embeddings().weight)
    model.eval().save_pretrained(directory)
    if released:
        written = json.loads((directory / "config.json").read_text())
        written.pop("scale_decoder_outputs")
        written["tie_word_embeddings"] = False
        (directory / "config.json").write_text(json.dumps(written))
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(directory).eval(), tok


def seq2seq_batch(tok, start_id):
    """Source and decoder input (the start token, then a target), both padded, with their masks."""
    src = tok(["the module number 12 defines the name 5, and returns 36 values.", "Hi!"], padding=True, return_tensors="pt",
              add_special_tokens=False)
    tgt = tok(["the name 5 defines 36 values, and the module 7 returns the number 12.", "module"], padding=True, return_tensors="pt",
              add_special_tokens=False)
    ids, mask = src["input_ids"], src["attention_mask"]
    dec = torch.cat([torch.full((2, 1), start_id), tgt["input_ids"]], 1)
    dec_mask = torch.cat([torch.ones(2, 1, dtype=torch.long), tgt["attention_mask"]], 1)
    assert not mask.all() and not dec_mask.all() and min(ids.size(1), dec.size(1)) > 12  # padded; past max_distance
    return ids, mask, dec, dec_mask


def seq2seq_logits(module, hf, batch_):
    ids, mask, dec, dec_mask = batch_
    with torch.no_grad():
        ours = module(ids, dec, mask, dec_mask)
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    assert ours.shape == theirs.shape
    return ours, theirs, (ours - theirs).abs().max().item()  # every decoder position, padding too


def lit_seq2seq(pretrained):
    from lit_ptm import objectives

    module = getattr(objectives, pretrained.objective)(config=pretrained.config)
    module.configure_model()
    module.load_state_dict(pretrained.state_dict, strict=True)
    return module.eval()


SEQ2SEQ_VARIANTS = [  # (family, HF config overrides, config.json as released)
    ("t5", {}, False),  # T5 v1.0: relu, tied head, decoder output scaled by d_model^-0.5
    ("t5", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, False),  # v1.1 / flan-t5 as transformers 5 saves it
    ("t5", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, True),  # ... and as the hub has it
    ("t5", {"feed_forward_proj": "gated-silu", "layer_norm_epsilon": 1e-3, "num_decoder_layers": 2}, False),
    ("bart", {}, False),
    ("bart", {"scale_embedding": True, "activation_function": "relu", "tie_word_embeddings": False, "decoder_layers": 2}, False),
]


@pytest.mark.parametrize("family, overrides, released", SEQ2SEQ_VARIANTS,
                         ids=lambda v: v if isinstance(v, str) else ("released" if v is True else "-".join(f"{k}={x}" for k, x in v.items())
                                                                     if isinstance(v, dict) else "") or "default")
def test_hf_seq2seq_to_lit_ptm_logits_match_and_round_trip_is_exact(family, overrides, released, tmp_path):
    from lit_ptm import objectives
    from lit_ptm.pretrained import load_pretrained

    hf_dir = tmp_path / "hf"
    hf, tok = hf_seq2seq(family, hf_dir, released=released, **overrides)
    pretrained = load_pretrained(hf_dir)
    assert (pretrained.objective, pretrained.backbone, pretrained.causal) == ({"t5": "T5", "bart": "BART"}[family], "encoder", False)
    config = pretrained.config
    untied = overrides.get("tie_word_embeddings") is False
    assert config.tie_word_embeddings is not untied
    if family == "t5":
        assert config.lm_head_scale is not untied and hf.config.scale_decoder_outputs is not untied
        assert config.feed_forward == ("gated" if "gated" in overrides.get("feed_forward_proj", "") else "dense")
        assert (config.num_layers, config.num_decoder_layers or config.num_layers) == (2, overrides.get("num_decoder_layers", 3))
    else:
        assert (config.position_offset, config.max_position_embeddings) == (2, 42)
        assert config.scale_embeddings is bool(overrides.get("scale_embedding"))
    module = lit_seq2seq(pretrained)
    batch_ = seq2seq_batch(tok, hf.config.decoder_start_token_id)
    ours, theirs, diff = seq2seq_logits(module, hf, batch_)
    MAX_DIFF[f"import {family} {overrides} released={released}"] = diff
    assert diff < 1e-5
    # The tokenizer by role (T5: pad, eos, unk and its sentinels; BART: RoBERTa's roles).
    ours_tok = Tokenizer.load(hf_dir / "tokenizer.json")
    assert ours_tok.vocab_size == len(tok) and (ours_tok.ids.pad, ours_tok.ids.eos) == (tok.pad_token_id, tok.eos_token_id)
    if family == "t5":
        assert ours_tok.hf.token_to_id("<extra_id_0>") == tok.convert_tokens_to_ids("<extra_id_0>")
    # import: a T5 / BART run whose encoder is the backbone; the objective continues from it with the same logits.
    run = import_hf(hf_dir, tmp_path / "run")
    meta = torch.load(run / "last.ckpt", weights_only=True)
    start = {"t5": "pad", "bart": "eos"}[family]
    assert meta["lit_ptm"]["backbone"] == "encoder" and meta["lit_ptm"]["stacks"] == ["encoder", "decoder"]
    assert meta["lit_ptm"]["decoder_start"] == meta["hyper_parameters"]["decoder_start"] == start
    assert getattr(ours_tok.ids, start) == hf.config.decoder_start_token_id
    assert f"class_path: lit_ptm.objectives.{pretrained.objective}" in (run / "config.yaml").read_text()
    continued = getattr(objectives, pretrained.objective)(pretrained=str(run))
    continued.configure_model()
    with torch.no_grad():
        assert torch.equal(continued.eval()(batch_[0], batch_[2], batch_[1], batch_[3]), ours)
    # HF -> import -> export -> HF: every parameter back unchanged, in the same class.
    back, cls = export_hf(run, tmp_path / "back")
    assert cls == type(hf).__name__
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(back).eval()
    original, returned = hf.state_dict(), again.state_dict()
    assert original.keys() == returned.keys()
    for key in original:
        assert torch.equal(original[key], returned[key]), key
    if family == "t5":
        assert again.config.scale_decoder_outputs == hf.config.scale_decoder_outputs
        assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is not untied
    assert transformers.AutoTokenizer.from_pretrained(back)(SENTENCES[0], add_special_tokens=False)["input_ids"] == \
        tok(SENTENCES[0], add_special_tokens=False)["input_ids"]


def seq2seq_checkpoint(tmp_path, cls, config, tok, **kw):
    """An encoder-decoder objective with random weights, saved as lit_ptm saves it, and the family it recorded."""
    module, run, checkpoint = random_run(tmp_path, tok, cls, config=config, **kw)
    return module, run, checkpoint["lit_ptm"]["family"]


SEQ2SEQ_BASE = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, max_position_embeddings=40, dropout=0.0,
                    attention_dropout=0.0, lm_head_transform=False, type_vocab_size=0)
T5_FLAGS = dict(position_embedding="relative", norm="rms", norm_position="pre", embedding_norm=False, final_norm=True, bias=False,
                lm_head_bias=False, scale_attention=False, norm_eps=1e-6, relative_buckets=8, relative_max_distance=12)
LIT_SEQ2SEQ = [  # (objective, config flags, the HF family it exports to)
    ("T5", {**T5_FLAGS, "activation": "relu", "lm_head_scale": True, "num_decoder_layers": 3}, "t5"),
    ("T5", {**T5_FLAGS, "activation": "gelu_tanh", "feed_forward": "gated", "tie_word_embeddings": False}, "t5"),
    ("T5", {**T5_FLAGS, "activation": "silu", "feed_forward": "gated", "tie_word_embeddings": False, "lm_head_scale": True}, "t5"),
    ("BART", {"position_offset": 2, "max_position_embeddings": 42, "norm_eps": 1e-5, "scale_embeddings": True, "num_decoder_layers": 1},
     "bart"),
    ("MASS", {"norm_eps": 1e-5, "tie_word_embeddings": False, "activation": "relu"}, "bart"),  # position_offset 0: 2 rows added
    ("BART", {"position_offset": 5, "max_position_embeddings": 45, "norm_eps": 1e-5}, "bart"),  # 3 unused rows dropped
]


@pytest.mark.parametrize("objective, flags, family", LIT_SEQ2SEQ, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}={x}" for k, x in v.items() if k not in T5_FLAGS and k != "norm_eps"))
def test_a_lit_ptm_seq2seq_run_exported_gives_the_same_logits_in_hf(objective, flags, family, tmp_path):
    from lit_ptm import objectives
    from lit_ptm.nn import ModelConfig
    from lit_ptm.tokenizer import train_tokenizer

    tok = train_tokenizer(SENTENCES, "wordpiece", 300)
    config = ModelConfig(vocab_size=tok.vocab_size, **{**SEQ2SEQ_BASE, **flags})
    module, run, recorded = seq2seq_checkpoint(tmp_path, getattr(objectives, objective), config, tok)
    assert recorded == family
    out, cls = export_hf(run, tmp_path / "hf")
    assert cls == {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}[family]
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(hf).__name__ == cls
    start = getattr(tok.ids, module.decoder_start)
    assert hf.config.decoder_start_token_id == start and hf.config.eos_token_id == module.end_of_target(tok.ids)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    _, _, diff = seq2seq_logits(module, hf, seq2seq_batch(hf_tok, start))
    MAX_DIFF[f"export {objective} {flags}"] = diff
    assert diff < 1e-5
    # HF's tokenizer frames a text as the objective frames a source.
    text = hf_tok("the module")["input_ids"]
    plain = hf_tok("the module", add_special_tokens=False)["input_ids"]
    assert text == module.frame_source(plain, tok.ids)
    # Back again: the same logits in lit_ptm.
    run_back = import_hf(out, tmp_path / "back")
    from lit_ptm.pretrained import load_pretrained

    again = lit_seq2seq(load_pretrained(run_back))
    batch_ = seq2seq_batch(hf_tok, start)
    with torch.no_grad():
        assert (again(batch_[0], batch_[2], batch_[1], batch_[3]) - module(batch_[0], batch_[2], batch_[1], batch_[3])).abs().max() < 1e-6


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_fine_tuning_and_continued_pretraining_start_from_an_hf_seq2seq_directory(family, tmp_path):
    """``--model.pretrained HF_DIR``: the T5 / BART objective takes both stacks and the head; a fine-tuning task
    takes the encoder, which computes what HF's encoder does."""
    from lit_ptm import objectives
    from lit_ptm.tasks import TokenClassification

    hf_dir = tmp_path / "hf"
    hf, tok = hf_seq2seq(family, hf_dir)
    batch_ = seq2seq_batch(tok, hf.config.decoder_start_token_id)
    continued = getattr(objectives, {"t5": "T5", "bart": "BART"}[family])(pretrained=str(hf_dir))
    continued.configure_model()
    _, _, diff = seq2seq_logits(continued.eval(), hf, batch_)
    MAX_DIFF[f"continued {family}"] = diff
    assert diff < 1e-5 and continued.started_from == str(hf_dir)
    task = TokenClassification(pretrained=str(hf_dir), labels=["O", "B-X", "I-X"])
    task.configure_model()
    ids, mask = batch_[0], batch_[1]
    with torch.no_grad():
        ours = task.eval().encode({"input_ids": ids, "attention_mask": mask})
        theirs = hf.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    diff = (ours[real] - theirs[real]).abs().max().item()
    MAX_DIFF[f"fine-tuning encoder {family}"] = diff
    assert diff < 1e-5


def test_a_bart_directory_fine_tunes_through_the_cli(tmp_path, cache_dir):
    """BART's tokenizer has <s> / </s> as [CLS] / [SEP]: a classifier fine-tunes its encoder straight from the HF directory."""
    hf_dir = tmp_path / "hf"
    hf_seq2seq("bart", hf_dir)
    fine = run_cli(["fit", "--config", str(CONFIGS / "finetune/classify.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"),
                    "--model.init_args.pretrained", str(hf_dir), "--trainer.default_root_dir", str(tmp_path / "ft"),
                    "--trainer.max_steps", "2", "--data.init_args.train_examples", "64", "--data.init_args.max_length", "32",
                    "--trainer.enable_progress_bar", "false"])
    assert fine.trainer.global_step == 2 and fine.model.started_from == str(hf_dir)
    assert fine.model.transformer.config.position_offset == 2
    # The fine-tuned encoder records its family, but HF has no BART class that classifies with the encoder alone.
    assert torch.load(tmp_path / "ft" / "last.ckpt", weights_only=True)["lit_ptm"]["family"] == "bart"
    with pytest.raises(HFError, match="a bart model with the classify head has no HF class"):
        export_hf(tmp_path / "ft", tmp_path / "back")


@pytest.mark.parametrize("recipe, hf_class", [("t5", "T5ForConditionalGeneration"), ("bart", "BartForConditionalGeneration")])
def test_a_trained_t5_or_bart_recipe_run_exported_gives_the_same_logits_in_hf(recipe, hf_class, tmp_path, cache_dir):
    from lit_ptm.pretrained import load_pretrained

    root = tmp_path / recipe
    run_cli(["fit", *tiny_args(recipe, root, "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0")])
    meta = torch.load(root / "last.ckpt", weights_only=True)["lit_ptm"]
    assert (meta["family"], meta["backbone"]) == (recipe, "encoder")
    out, cls = export_hf(root, tmp_path / "hf")
    assert cls == hf_class
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    module = lit_seq2seq(load_pretrained(root))
    _, _, diff = seq2seq_logits(module, hf, seq2seq_batch(hf_tok, hf.config.decoder_start_token_id))
    MAX_DIFF[f"export {recipe} recipe run"] = diff
    assert diff < 1e-5
    assert hf_tok.convert_ids_to_tokens(hf.config.decoder_start_token_id) == {"t5": "[PAD]", "bart": "[EOS]"}[recipe]


def test_continued_bart_and_t5_pretraining_from_hf_directories_and_a_mass_run_exported_as_bart(tmp_path, cache_dir):
    # T5's tokenizer has no [CLS] / [SEP]: its collator strips the windows' frame, and takes <extra_id_N> as sentinels.
    for family in ("bart", "t5"):
        hf_dir = tmp_path / f"hf-{family}"
        hf_seq2seq(family, hf_dir)
        args = ["--model.init_args.pretrained", str(hf_dir), "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                "--data.init_args.seq_length", "32"]
        cli = run_cli(["fit", *tiny_args(family, tmp_path / f"continued-{family}", *args)])
        assert cli.trainer.global_step == 3 and cli.model.started_from == str(hf_dir)
        assert cli.model.config.hidden_size == 32 and cli.datamodule.tokenizer.vocab_size == cli.model.config.vocab_size
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    # MASS's recipe is BART's architecture (positions offset differently: rows are added on export); with
    # BERT's LayerNorm eps (1e-12) there is nothing to export it to: HF's BART fixes 1e-5.
    root = tmp_path / "mass"
    assert one_step_family("mass", root) == "bart"
    assert export_hf(root, tmp_path / "hf-mass")[1] == "BartForConditionalGeneration"
    root = tmp_path / "mass-eps"
    assert one_step_family("mass", root, "--model.init_args.config.norm_eps", "1e-12") is None
    with pytest.raises(HFError, match=r"nearest bart, which differs in model.config.norm_eps=1e-12 \(bart has 1e-05\)"):
        export_hf(root, tmp_path / "hf-mass-eps")


def test_seq2seq_settings_lit_ptm_cannot_compute_exactly_are_refused(tmp_path):
    from lit_ptm import objectives
    from lit_ptm.hf import family_of
    from lit_ptm.nn import ModelConfig
    from lit_ptm.tokenizer import train_tokenizer

    for family, overrides, message in (
        ("t5", {"d_kv": 16}, r"d_kv=16 with num_heads=4 is not d_model=32"),
        ("t5", {"feed_forward_proj": "gated-gelu_fast"}, r"feed_forward_proj='gated-gelu_fast': 'gelu_fast' has no exact counterpart"),
        ("bart", {"decoder_attention_heads": 2}, r"encoder_attention_heads=4 differs from decoder_attention_heads=2"),
        ("bart", {"decoder_ffn_dim": 64}, r"encoder_ffn_dim=48 differs from decoder_ffn_dim=64"),
    ):
        hf_seq2seq(family, tmp_path / family, **overrides)
        with pytest.raises(HFError, match=message):
            read_hf_dir(tmp_path / family)
    # mBART's pre-LN settings in an older BART config.json: refused, not silently read as BART.
    mbart = tmp_path / "mbart"
    hf_seq2seq("bart", mbart)
    written = json.loads((mbart / "config.json").read_text())
    (mbart / "config.json").write_text(json.dumps({**written, "normalize_before": True, "add_final_layer_norm": True}))
    with pytest.raises(HFError, match=r"normalize_before=True is not mapped"):
        read_hf_dir(mbart)
    # An encoder alone (T5EncoderModel) is no T5 run to import; fine-tuning takes it.
    encoder = tmp_path / "encoder"
    tok = hf_tokenizer("t5", encoder)
    transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(tok), **T5_TINY)).save_pretrained(encoder)
    with pytest.raises(HFError, match="holds no decoder and LM head"):
        import_hf(encoder, tmp_path / "run")
    read = read_hf_dir(encoder)
    assert read.stacks == ("encoder",) and not any(k.startswith("decoder.") for k in read.state_dict)
    # Export: a gated feed-forward with exact gelu (T5's gated-gelu is gelu_tanh); an encoder-only MLM head on a BART-like stack.
    lit_tok = train_tokenizer(SENTENCES, "wordpiece", 300)
    config = ModelConfig(vocab_size=lit_tok.vocab_size, **{**SEQ2SEQ_BASE, **T5_FLAGS, "feed_forward": "gated", "activation": "gelu"})
    _, run, recorded = seq2seq_checkpoint(tmp_path / "gelu", objectives.T5, config, lit_tok)
    assert recorded is None
    with pytest.raises(HFError, match=r"nearest t5, which differs in model.config.activation='gelu' with feed_forward='gated'"):
        export_hf(run, tmp_path / "hf-gelu")
    bart_like = ModelConfig(vocab_size=lit_tok.vocab_size, **{**SEQ2SEQ_BASE, "norm_eps": 1e-5, "position_offset": 2})
    assert family_of(bart_like) == "bart"
    _, run, recorded = seq2seq_checkpoint(tmp_path / "mlm", objectives.MaskedLM, bart_like, lit_tok)
    with pytest.raises(HFError, match="a bart model with the mlm head has no HF class"):
        export_hf(run, tmp_path / "hf-mlm")
    assert family_of(ModelConfig(vocab_size=99, **{**SEQ2SEQ_BASE, "norm_eps": 1e-6})) is None  # BART's LayerNorm eps is fixed
    # Encoder and decoder token tables that differ (transformers 5 keeps three tables for an untied BART): lit_ptm shares one.
    from safetensors.torch import load_file, save_file

    untied = tmp_path / "untied"
    hf_seq2seq("bart", untied, tie_word_embeddings=False)
    weights = load_file(untied / "model.safetensors")
    weights["model.decoder.embed_tokens.weight"] = weights["model.decoder.embed_tokens.weight"] + 1
    save_file(weights, untied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFError, match="the encoder's and the decoder's token tables"):
        read_hf_dir(untied)


def test_report_max_logit_differences():
    """Runs last: the largest difference each parity test measured (pytest -s shows them)."""
    for name, diff in MAX_DIFF.items():
        print(f"{diff:.2e}  {name}")
