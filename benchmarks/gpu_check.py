"""GPU paths that CPU tests cannot reach: which SDPA kernel our attention gets, and bf16 training steps.

    python benchmarks/gpu_check.py

For each attention case the stack produces (encoder without padding, causal decoder, padded batch,
packed documents) it runs forward + backward in bf16 with SDPA restricted to one backend at a time
and prints which backends accept the call: the unmasked and causal cases must run on the flash
kernel; masked ones fall to the memory-efficient or cuDNN kernels (flash takes no explicit mask).
Then one bf16 training step of each objective on a BERT-base sized stack, checking a finite loss and
gradients. Exit status 1 when a required kernel is refused or a step is not finite.
"""

from __future__ import annotations

import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_ptm.nn import ModelConfig, Transformer

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
}


def attention_cases(B: int = 8, T: int = 512):
    lengths = torch.randint(T // 2, T + 1, (B,))
    padding = torch.arange(T)[None, :] < lengths[:, None]
    segments = (torch.arange(T)[None, :] >= torch.randint(1, T, (B, 1))).long()  # two documents per row
    yield "encoder, no padding", False, {}, ("flash",)
    yield "causal decoder (is_causal)", True, {}, ("flash",)
    yield "encoder, padded batch", False, {"attention_mask": padding}, ()
    yield "causal, packed documents", True, {"segment_ids": segments}, ()


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA device"
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    failures = 0
    for name, causal, extra, required in attention_cases():
        config = ModelConfig(vocab_size=30522, hidden_size=768, num_layers=2, num_heads=12, max_position_embeddings=512,
                             causal=causal, dropout=0.0, attention_dropout=0.0)
        model = Transformer(config).cuda()
        ids = torch.randint(10, 30000, (8, 512), device="cuda")
        extra = {k: v.cuda() for k, v in extra.items()}
        accepted = []
        for backend_name, backend in BACKENDS.items():
            try:
                with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
                    model(ids, **extra).float().square().mean().backward()
                torch.cuda.synchronize()
                accepted.append(backend_name)
            except RuntimeError:
                pass
            model.zero_grad(set_to_none=True)
        missing = [r for r in required if r not in accepted]
        failures += bool(missing)
        print(f"{name:30s} runs on: {', '.join(accepted):35s} {'MISSING ' + ','.join(missing) if missing else 'ok'}")

    from lit_ptm.objectives import CausalLM, MaskedLM

    base = dict(hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=512, vocab_size=30522)
    for label, module, batch in (
        ("CausalLM", CausalLM(ModelConfig(**base)), None),
        ("MaskedLM+NSP", MaskedLM(ModelConfig(**base, type_vocab_size=2), pair_task="nsp"), None),
    ):
        module = module.cuda()
        ids = torch.randint(10, 30000, (16, 256), device="cuda")
        labels = torch.where(torch.rand(16, 256, device="cuda") < 0.15, ids, -100)
        batch = {"input_ids": ids, "labels": ids if label == "CausalLM" else labels}
        if label != "CausalLM":
            batch["token_type_ids"] = (torch.arange(256, device="cuda") >= 128).long().expand(16, -1)
            batch["pair_labels"] = torch.randint(0, 2, (16,), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.loss_parts(batch)["loss"]
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and all(torch.isfinite(g).all() for g in grads)
        failures += not finite
        print(f"bf16 step {label:14s} loss {loss.item():.3f}, {len(grads)} parameter grads, finite: {finite}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
