"""XLNet's Transformer-XL segment recurrence (``model.mem_len``): stream batches, the memory in the
stack, and a killed run that resumes with its memory."""

import os

import pytest
import torch

from conftest import ROOT, run_module, scalars, tiny_args
from lit_ptm.data.sampling import StreamSampler
from lit_ptm.nn import AttentionMask, ModelConfig, Transformer

XL = ModelConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, position_embedding="xlnet_relative",
                 attention_bias=False, embedding_norm=False, lm_head_transform=False, dropout=0.0, attention_dropout=0.0)


def test_stream_batches_continue_each_row_and_split_the_streams_over_ranks():
    """Row b of batch t + 1 is the window after row b's window of batch t; ranks hold disjoint streams;
    an epoch starts the streams elsewhere; evaluation keeps one order; a resume skips whole batches."""
    n, B, world = 103, 3, 2
    steps = n // (B * world)
    per_rank = []
    for rank in range(world):
        sampler = StreamSampler(n, seed=5, batch_size=B, rank=rank, world_size=world)
        sampler.set_epoch(1)
        indices = [i for _, i in sampler]
        assert len(indices) == len(sampler) == steps * B
        batches = torch.tensor(indices).view(steps, B)  # (t, b)
        assert ((batches[1:] - batches[:-1]) % n == 1).all()  # each row continues its text (modulo the rotation)
        per_rank.append(set(indices))
    assert not per_rank[0] & per_rank[1] and len(per_rank[0] | per_rank[1]) == steps * B * world
    epochs = []
    for epoch in (1, 2):
        sampler = StreamSampler(n, seed=5, batch_size=B)
        sampler.set_epoch(epoch)
        epochs.append([i for _, i in sampler])
    assert epochs[0] != epochs[1]
    evaluation = StreamSampler(n, seed=5, batch_size=B, shuffle=False, fixed_epoch=True)
    first = list(evaluation)
    evaluation.set_epoch(4)
    assert list(evaluation) == first and [i for _, i in first[:B]] == [0, n // B, 2 * (n // B)]
    resumed = StreamSampler(n, seed=5, batch_size=B)
    resumed.resume(epoch=2, skip=4 * B)
    resumed.set_epoch(2)
    assert [i for _, i in resumed] == epochs[1][4 * B:]


def test_the_memory_carries_the_previous_window_into_both_streams_without_gradient():
    torch.manual_seed(0)
    m = Transformer(XL).eval()
    L, M = 7, 5
    first, second = torch.randint(5, 60, (2, L)), torch.randint(5, 60, (2, L))
    previous = m(first, memory_length=M)
    assert [tuple(t.shape) for t in previous.memory] == [(2, M, 32)] * 2 and not previous.memory[0].requires_grad
    g0 = torch.randn(2, 3, 32)
    columns = torch.tensor([[1, 4, 6], [0, 2, 5]])
    query = AttentionMask(explicit=torch.ones(2, 3, L, dtype=torch.bool).scatter(2, columns[:, :, None], False))

    def run(memory, memory_padding=None):
        out = m(second, query_stream=g0, query_mask=query, query_columns=columns, memory=memory, memory_padding=memory_padding)
        return out.hidden, out.query_hidden

    alone, with_memory = run(None), run(previous.memory)
    for a, b in zip(alone, with_memory):
        assert not torch.allclose(a, b, atol=1e-4)  # both streams read the memory
    # The memory of another first window gives other states; memory the padding hides is not read at all.
    other = m(torch.randint(5, 60, (2, L)), memory_length=M).memory
    assert not torch.allclose(run(other)[1], with_memory[1], atol=1e-4)
    hidden = torch.zeros(2, M, dtype=torch.bool)
    hidden[:, -1] = True  # one visible memory position each, the rest hidden
    changed = [t.clone() for t in previous.memory]
    for t in changed:
        t[:, :-1] = torch.randn_like(t[:, :-1])
    for a, b in zip(run(previous.memory, hidden), run(changed, hidden)):
        assert torch.allclose(a, b, atol=1e-6)
    # The next memory: the last M inputs of each layer over (memory, this window).
    nxt = m(second, memory=previous.memory, memory_length=M).memory
    assert torch.equal(nxt[0], m.embeddings(second)[:, -M:])
    # No gradient reaches the previous window.
    embeddings = m.embeddings.tokens.weight
    x = m(first, memory_length=M)
    loss = m(second, memory=x.memory).hidden.sum()
    (grad,) = torch.autograd.grad(loss, embeddings)
    assert grad[first.unique()[~torch.isin(first.unique(), second)]].abs().sum() == 0


@pytest.mark.parametrize("recipe", ["xlnet"])
def test_a_killed_run_with_memory_resumes_with_it(recipe, tmp_path, cache_dir):
    """mem_len 16 with dropout: killed after step 8, resumed from step 5's checkpoint, the losses of a straight
    run; the checkpoint holds the memory of step 5, and a resume without it gives other losses."""
    common = ["--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
              "--checkpoint.every_n_steps", "5", "--model.init_args.config.dropout", "0.1", "--data.init_args.batch_size", "4",
              "--model.init_args.mem_len", "16", "--trainer.max_steps", "11"]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), "LIT_PTM_CACHE": str(cache_dir)}
    straight, killed, forgot = tmp_path / "straight", tmp_path / "killed", tmp_path / "forgot"
    assert run_module(["fit", *tiny_args(recipe, straight, *common)], env=env).returncode == 0
    for root in (killed, forgot):
        r = run_module(["fit", *tiny_args(recipe, root, *common, "--trainer.callbacks+=helpers.KillAt", "--trainer.callbacks.step", "8")],
                       env=env)
        assert r.returncode == 3, r.stderr[-3000:]
    ckpt = torch.load(killed / "last.ckpt", weights_only=True)
    memory = ckpt["lit_ptm"]["memory"]
    assert ckpt["global_step"] == 5 and memory["layers"].shape == (1, 2, 4, 16, 64) and memory["padding"].shape == (1, 4, 16)
    del ckpt["lit_ptm"]["memory"]
    torch.save(ckpt, forgot / "last.ckpt")
    for root in (killed, forgot):
        r = run_module(["fit", *tiny_args(recipe, root, *common), "--ckpt_path", str(root / "last.ckpt")], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b, c = (scalars(root, "train/loss") for root in (straight, killed, forgot))
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 11
    for step in range(5, 11):
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])
    assert abs(a[5] - c[5]) > 1e-4  # the memory mattered to the first resumed step
