import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lit_ptm.nn import ModelConfig
from lit_ptm.objectives import CausalLM, MaskedLM, OptimConfig
from lit_ptm.objectives.base import lr_factor

TINY = ModelConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=32)


def test_warmup_then_linear_or_cosine_decay():
    assert lr_factor(0, 10, 100, "linear", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "linear", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, "linear", 0.0) == pytest.approx(0.0)
    assert lr_factor(55, 10, 100, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 100, "constant", 0.0) == 1.0
    with pytest.raises(ValueError, match="model.optim.schedule='step'"):
        OptimConfig(schedule="step")


@pytest.mark.parametrize("precision, fused", [(Precision(), True), (MixedPrecision("bf16-mixed", "cpu"), False)])
def test_adamw_decays_matrices_only_and_steps_the_schedule_per_step(precision, fused):
    model = MaskedLM(config=TINY, optim=OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=4))
    model.configure_model()
    model.trainer = SimpleNamespace(estimated_stepping_batches=20, precision_plugin=precision)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert sched["interval"] == "step" and opt.defaults["fused"] is fused
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert norm_weights <= {id(p) for p in no_decay["params"]}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched["scheduler"].step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3 * 15 / 16])


def test_causal_objective_reads_causally_and_learns_a_pattern():
    torch.manual_seed(0)
    model = CausalLM(config=TINY)
    assert not model.is_built  # the constructor builds nothing: Lightning calls configure_model
    model.configure_model()
    assert model.causal and not MaskedLM(config=TINY).causal
    assert model.attention_mask({"input_ids": torch.zeros(1, 3, dtype=torch.long)}).causal
    # A repeating sequence is learnable only by looking back: loss must fall far below log(V).
    ids = torch.arange(10, 40).repeat(4, 2)[:, :33]
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss_parts(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.1 * math.log(120)


@pytest.mark.parametrize("module_kind", ["objective", "task"])
def test_norm_clipping_under_fsdp_goes_through_fsdps_own_clip_grad_norm(module_kind, monkeypatch):
    """Lightning's FSDPPrecision refuses gradient_clip_algorithm='norm' (bert.yaml clips at 1.0): both module
    bases clip through the FSDP-wrapped model instead; other strategies keep Lightning's path."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lit_ptm.objectives import CausalLM
    from lit_ptm.tasks import SequenceClassification

    module = CausalLM(TINY) if module_kind == "objective" else SequenceClassification(config=TINY, labels=["a", "b"])
    clipped = []
    fsdp = FSDPStrategy()
    fsdp.model = SimpleNamespace(clip_grad_norm_=clipped.append)
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(strategy=fsdp)))
    monkeypatch.setattr(module, "clip_gradients", lambda *a, **k: clipped.append(("lightning", k)))
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert clipped == [1.0]
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(strategy=DDPStrategy())))
    module.configure_gradient_clipping(None, 0.5, "norm")
    assert clipped[-1] == ("lightning", {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "norm"})


def test_a_token_table_initialised_larger_steps_at_its_own_scale():
    """T5's table starts at std 1.0, its other weights at init_std: AdamW steps every weight by ~lr, so the
    table takes lr * embedding_init_std / init_std (the table of the encoder, the decoder and the tied head
    is one parameter) and moves, relative to its size, as the other weights do. Without that, a tiny T5
    run's table was still 96% its random init after 3,000 steps and its encoder classified at 0.34 (vs 0.64)."""
    from lit_ptm.objectives import T5
    from lit_ptm.tasks import SequenceClassification

    config = dataclasses.replace(TINY, embedding_init_std=1.0, init_std=0.05, position_embedding="relative", norm="rms",
                                 norm_position="pre", final_norm=True, embedding_norm=False, bias=False, lm_head_transform=False,
                                 lm_head_bias=False, lm_head_scale=True, scale_attention=False, dropout=0.0, attention_dropout=0.0)
    for make in (lambda optim: T5(config=config, optim=optim),
                 lambda optim: SequenceClassification(config=config, optim=optim, labels=["a", "b"])):
        for explicit, table_lr in ((None, 2e-2), (1.0, 1e-3), (5.0, 5e-3)):
            torch.manual_seed(0)
            model = make(OptimConfig(lr=1e-3, warmup_steps=1, embedding_lr_scale=explicit))
            model.configure_model()
            model.trainer = SimpleNamespace(estimated_stepping_batches=20, precision_plugin=Precision())
            opt = model.configure_optimizers()["optimizer"]
            stack = model.encoder if isinstance(model, T5) else model.transformer
            table = stack.embeddings.tokens.weight
            lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
            assert sum(id(table) == i for g in opt.param_groups for i in map(id, g["params"])) == 1
            assert lr_of[id(table)] == pytest.approx(table_lr)
            assert [lr for i, lr in lr_of.items() if i != id(table)] == pytest.approx([1e-3] * (len(lr_of) - 1))
            if explicit is None:  # one step: the table moves, relative to its size, about as a block's matrix does
                before = {n: p.detach().clone() for n, p in (("table", table), ("qkv", stack.blocks[0].attention.qkv.weight))}
                for p in model.parameters():
                    p.grad = torch.randn_like(p)
                opt.step()
                moved = {n: ((p - before[n]).norm() / before[n].norm()).item()
                         for n, p in (("table", table), ("qkv", stack.blocks[0].attention.qkv.weight))}
                assert 0.5 < moved["table"] / moved["qkv"] < 2.0, moved
    # A config without embedding_init_std (BERT, an imported T5) keeps one learning rate.
    model = MaskedLM(config=TINY, optim=OptimConfig(lr=1e-3, warmup_steps=1))
    model.configure_model()
    model.trainer = SimpleNamespace(estimated_stepping_batches=20, precision_plugin=Precision())
    assert [g["lr"] for g in model.configure_optimizers()["optimizer"].param_groups] == pytest.approx([1e-3, 1e-3])
    with pytest.raises(ValueError, match="model.optim.embedding_lr_scale=0"):
        OptimConfig(embedding_lr_scale=0)
