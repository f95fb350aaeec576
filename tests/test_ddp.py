"""Multi-process runs on CPU with gloo over loopback: DDP on one machine, and two simulated nodes."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_module, scalars, tiny_args

DIST = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.max_steps", "20",
        "--trainer.val_check_interval", "10", "--data.init_args.batch_size", "8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(cache_dir) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GLOO_SOCKET_IFNAME": "lo",
            "LIT_PTM_CACHE": str(cache_dir)}


def check_distributed_run(root, world_size):
    ckpt = torch.load(root / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20
    state = ckpt["PretrainDataModule"]
    assert state["world_size"] == world_size and state["batches"] == 20
    assert len(scalars(root, "val/loss")) == 2


@pytest.mark.parametrize("recipe", ["gpt", "xlnet", "mpnet"])
def test_ddp_two_processes(recipe, tmp_path, cache_dir):
    """XLNet: DDP wants every parameter in the loss, and pretraining gives no segments (its segment
    parameters once took no part and DDP refused to train)."""
    root = tmp_path / "ddp"
    r = run_module(["fit", *tiny_args(recipe, root, *DIST, "--trainer.devices", "2")], env=loopback_env(cache_dir))
    assert r.returncode == 0, r.stderr[-4000:]
    check_distributed_run(root, 2)


def test_two_simulated_nodes(tmp_path, cache_dir):
    """Two nodes that share no cache: node 1 must not train its own tokenizer (training is not
    deterministic across processes) but use rank 0's, broadcast to it."""
    import json

    root = tmp_path / "nodes"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **loopback_env(cache_dir)}
    args = [sys.executable, "-m", "lit_ptm", "fit", *tiny_args("bert", root, *DIST, "--trainer.devices", "1", "--trainer.num_nodes", "2")]
    caches = [tmp_path / f"node{n}-cache" for n in (0, 1)]
    nodes = [
        subprocess.Popen(args, cwd=ROOT, env={**env, "NODE_RANK": str(n), "LIT_PTM_CACHE": str(caches[n])},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outputs):
        assert p.returncode == 0, err[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1][1] + outputs[1][0]
    check_distributed_run(root, 2)
    assert list((caches[0] / "tokenizers").glob("*.json")) and not (caches[1] / "tokenizers").exists()
    shas = [json.loads(next((c / "stores").glob("*/meta.json")).read_text())["tokenizer_sha"] for c in caches]
    assert shas[0] == shas[1]
