"""Encoder-decoder models on the shared stack (MASS, T5, BART) and SpanBERT's boundary head: the
architecture flags T5 and BART need, leakage through the masks, the loss on handmade batches."""

import math

import pytest
import torch

from lit_ptm.nn import ModelConfig
from lit_ptm.nn.stack import RelativePositionBias
from lit_ptm.objectives import BART, MASS, T5, SpanBERT

BASE = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=40,
            dropout=0.0, attention_dropout=0.0)
T5_LIKE = ModelConfig(**BASE, position_embedding="relative", norm="rms", norm_position="pre", embedding_norm=False,
                      final_norm=True, bias=False, activation="relu", lm_head_transform=False, lm_head_bias=False,
                      scale_attention=False, lm_head_scale=True, norm_eps=1e-6, num_decoder_layers=3)
BART_LIKE = ModelConfig(**{**BASE, "max_position_embeddings": 42}, position_offset=2, lm_head_transform=False, norm_eps=1e-5)


def built(cls, config, **kw):
    torch.manual_seed(0)
    module = cls(config=config, **kw)
    module.configure_model()
    return module.eval()


@pytest.mark.parametrize("cls, config", [(T5, T5_LIKE), (BART, BART_LIKE), (MASS, BART_LIKE)])
def test_stacks_share_one_token_table_and_the_head_is_tied(cls, config):
    m = built(cls, config)
    assert m.decoder.embeddings.tokens is m.encoder.embeddings.tokens
    assert m.lm_head.output_weight is m.encoder.embeddings.tokens.weight
    assert len(m.decoder.blocks) == (config.num_decoder_layers or config.num_layers)
    assert all(b.cross_attention is not None for b in m.decoder.blocks) and all(b.cross_attention is None for b in m.encoder.blocks)
    if config.position_embedding == "learned":  # BART / MASS: each stack its own positions and embedding norm
        assert m.decoder.embeddings.positions is not m.encoder.embeddings.positions
    else:  # T5: no absolute positions, a relative bias table per stack, RMSNorm without bias
        assert m.encoder.embeddings.positions is None and m.decoder.relative_bias is not m.encoder.relative_bias
        assert isinstance(m.encoder.blocks[0].ffn_norm, torch.nn.RMSNorm)
        assert not any(n.endswith("bias") and "relative" not in n for n, _ in m.named_parameters())
    # One table, counted once.
    names = {id(p) for p in m.parameters()}
    assert len(names) == len(list(m.parameters()))


def source_and_target(B=2, S=9, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 64, (B, S), generator=g), torch.randint(5, 64, (B, T), generator=g)


@pytest.mark.parametrize("cls, config", [(T5, T5_LIKE), (BART, BART_LIKE)])
def test_decoder_outputs_never_depend_on_future_targets_or_encoder_padding(cls, config):
    m = built(cls, config)
    src, tgt = source_and_target()
    src_mask = torch.ones_like(src, dtype=torch.bool)
    src_mask[0, 6:] = False  # row 0: three padding tokens
    logits = m(src, tgt, src_mask)
    # A later decoder token changes nothing before it.
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 64
    later = m(src, changed, src_mask)
    torch.testing.assert_close(later[:, :4], logits[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(later[:, 4:], logits[:, 4:])
    # What sits in the encoder's padding changes nothing at all; a real source token does.
    padded = src.clone()
    padded[0, 6:] = 7
    torch.testing.assert_close(m(padded, tgt, src_mask)[0], logits[0], rtol=0, atol=1e-6)
    real = src.clone()
    real[0, 2] = (real[0, 2] + 1) % 64
    assert not torch.allclose(m(real, tgt, src_mask)[0], logits[0])


def test_t5_relative_buckets_follow_t5():
    bias = RelativePositionBias(T5_LIKE)
    d = torch.arange(-300, 301)
    # Bidirectional: 16 buckets a direction; 0..7 exact, then logarithmic up to 128, then the last.
    b = bias.bucket(d, bidirectional=True)
    assert b[d == 0].item() == 0 and b[d == 3].item() == 16 + 3 and b[d == -3].item() == 3
    assert b[d == 200].item() == 31 and b[d == -200].item() == 15 and b[d == 128].item() == 31
    assert (b[d > 0] >= 16).all() and (b[d <= 0] < 16).all()
    assert (b[(d >= 0) & (d < 300)].diff() >= 0).all()  # wider with distance
    # Causal: keys before the query only, all 32 buckets for them; keys after map to 0 (masked anyway).
    c = bias.bucket(d, bidirectional=False)
    assert c[d == -5].item() == 5 and c[d == -20].item() < c[d == -100].item() <= 31 and (c[d > 0] == 0).all()
    # Log buckets: distance 8 starts bucket 8 (bidirectional: 8 exact of 16; 12.. of 32 for the decoder).
    assert b[d == 8].item() == 16 + 8 and c[d == -16].item() == 16


def test_lm_loss_reads_only_labelled_positions():
    m = built(BART, BART_LIKE)
    src, tgt = source_and_target()
    labels = tgt.clone()
    labels[1, 5:] = -100
    batch = {"input_ids": src, "decoder_input_ids": tgt, "labels": labels,
             "decoder_attention_mask": labels != -100}
    parts = m.loss_parts(batch)
    logits = m(src, tgt, None, labels != -100)
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(parts.loss, expected, rtol=1e-5, atol=1e-6)
    assert parts.num_predicted == int((labels != -100).sum())


def test_mass_needs_learned_positions():
    from lit_ptm.errors import ConfigError

    with pytest.raises(ConfigError, match="position_embedding=learned"):
        MASS(config=T5_LIKE)


def test_span_boundary_objective_reads_the_tokens_outside_each_span():
    config = ModelConfig(**BASE, type_vocab_size=0)
    m = built(SpanBERT, config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (2, 10), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 3:6] = ids[0, 3:6]  # one span of three tokens: boundaries at 2 and 6
    labels[1, 1] = ids[1, 1]  # a one-token span: boundaries 0 and 2
    left = torch.zeros_like(ids)
    right = torch.zeros_like(ids)
    offset = torch.zeros_like(ids)
    left[0, 3:6], right[0, 3:6], offset[0, 3:6] = 2, 6, torch.tensor([0, 1, 2])
    left[1, 1], right[1, 1] = 0, 2
    batch = {"input_ids": ids, "labels": labels, "span_left": left, "span_right": right, "span_offset": offset}
    parts = m.loss_parts(batch)
    assert set(parts.parts) == {"mlm", "sbo"}
    torch.testing.assert_close(parts.loss, parts.parts["mlm"] + parts.parts["sbo"])
    hidden = m.encode(batch).hidden
    states = m.sbo_head(hidden[[0, 0, 0, 1], [2, 2, 2, 0]], hidden[[0, 0, 0, 1], [6, 6, 6, 2]], torch.tensor([0, 1, 2, 0]))
    logits = m.lm_head.bias + states @ m.lm_head.output_weight.t()
    expected = torch.nn.functional.cross_entropy(logits, labels[labels != -100])
    torch.testing.assert_close(parts.parts["sbo"], expected, rtol=1e-5, atol=1e-6)


# -- an encoder-decoder run's encoder fine-tunes like any encoder ------------------------------------------
@pytest.fixture(scope="module")
def seq2seq_runs(tmp_path_factory, cache_dir):
    from conftest import run_cli, tiny_args

    root = tmp_path_factory.mktemp("seq2seq")
    for recipe in ("t5", "bart"):
        run_cli(["fit", *tiny_args(recipe, root / recipe, "--trainer.max_steps", "30", "--trainer.limit_val_batches", "0")])
    return root


@pytest.mark.parametrize("recipe", ["t5", "bart"])
@pytest.mark.parametrize("task", ["classify", "tag", "qa"])
def test_the_encoder_of_an_encoder_decoder_run_fine_tunes_on_every_encoder_task(recipe, task, seq2seq_runs, tmp_path, monkeypatch):
    from conftest import ROOT, run_cli
    from test_finetune import keyword_dataset, ner_dataset, qa_dataset

    monkeypatch.chdir(ROOT)
    run = seq2seq_runs / recipe
    make = {"classify": keyword_dataset, "tag": ner_dataset, "qa": qa_dataset}[task]
    train, dev = make(tmp_path / "train.jsonl", 96, 0), make(tmp_path / "dev.jsonl", 24, 1)
    cli = run_cli(["fit", "--config", f"configs/finetune/{task}.yaml", "--config", "configs/finetune/tiny.yaml",
                   "--model.init_args.pretrained", str(run), "--trainer.default_root_dir", str(tmp_path / "ft"),
                   "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                   "--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev),
                   "--data.init_args.max_length", "48", "--data.init_args.stride", "16", "--trainer.max_epochs", "1"])
    assert cli.model.started_from == str(run / "last.ckpt") and not cli.model.reads_causally()
    # The task's stack is the run's encoder, T5's relative buckets and RMSNorm included (it has trained one epoch).
    state = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    encoder = {k[len("encoder."):]: v.shape for k, v in state.items() if k.startswith("encoder.")}
    assert {k: v.shape for k, v in cli.model.transformer.state_dict().items()} == encoder
    assert (recipe == "t5") == ("relative_bias.buckets.weight" in encoder)
    assert math.isfinite(cli.trainer.callback_metrics["val/loss"].item())


@pytest.mark.parametrize("recipe", ["t5", "bart"])
def test_fine_tuning_starts_from_the_encoders_weights(recipe, seq2seq_runs):
    from lit_ptm.tasks import SequenceClassification

    run = seq2seq_runs / recipe
    state = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    model = SequenceClassification(pretrained=str(run), labels=["a", "b"])
    model.configure_model()
    own = model.transformer.state_dict()
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    assert own.keys() == encoder.keys() and all(torch.equal(own[k], encoder[k]) for k in own)


def test_relative_bucket_settings_that_cannot_bucket_are_refused():
    from lit_ptm.errors import ConfigError

    with pytest.raises(ConfigError, match="model.config.relative_buckets=3: must be at least 4"):
        ModelConfig(relative_buckets=3)
    with pytest.raises(ConfigError, match="model.config.relative_max_distance=16: must exceed relative_buckets / 2 = 16"):
        ModelConfig(relative_buckets=32, relative_max_distance=16)
    for buckets, distance in ((4, 3), (32, 17), (8, 5)):  # the smallest accepted settings bucket every distance in range
        bias = RelativePositionBias(ModelConfig(**BASE, relative_buckets=buckets, relative_max_distance=distance))
        d = torch.arange(-1000, 1001)
        for bidirectional in (True, False):
            b = bias.bucket(d, bidirectional)
            assert b.min() >= 0 and b.max() < buckets


def test_mass_decoder_reads_the_fragment_at_its_original_positions():
    """MASS's decoder_position_ids reach the decoder: the loss is the forward's at those positions, not at 0..k-1."""
    m = built(MASS, BART_LIKE)
    src, tgt = source_and_target(T=4)
    positions = torch.tensor([[3, 4, 5, 6], [1, 2, 3, 4]])
    labels = torch.randint(5, 64, tgt.shape, generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": src, "decoder_input_ids": tgt, "decoder_position_ids": positions, "labels": labels}
    memory = m.encode_source(src).hidden

    def loss(position_ids):
        logits = m.lm_head(m.decode(tgt, memory, position_ids=position_ids).hidden)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())

    torch.testing.assert_close(m.loss_parts(batch).loss, loss(positions), rtol=1e-5, atol=1e-6)
    assert abs(m.loss_parts(batch).loss.item() - loss(None).item()) > 1e-4
