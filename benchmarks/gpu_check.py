"""GPU paths that CPU tests cannot reach: which kernel each attention pattern gets, FlexAttention
against SDPA, and bf16 training steps (eager and compiled) of every objective.

    python benchmarks/gpu_check.py [BATCH SEQ] [attention] [flex]
        # default 8 x 1024; "attention": no training steps; "flex": also FlexAttention against SDPA

1. For each pattern an objective can hand the stack (AttentionMask: none, causal, padding, packed
   documents, prefix LM, explicit, bias, a cached decoding step) it prints the kernel the lowering
   picks (sdpa / sdpa-causal / sdpa-masked / flex) and, for SDPA, which backends accept the call when
   restricted to one at a time: unmasked and causal must run on flash; masked patterns on the fused
   memory-efficient or cuDNN kernels.
2. ("flex") FlexAttention against the same pattern lowered to a dense SDPA mask, in fp32: forward and
   backward must agree (on torch 2.11 the gradients do not: nn.mask.USE_FLEX stays off), and the
   bf16 step time of each.
3. One bf16 training step of each objective on a BERT-base sized stack, eager and --model.compile:
   finite loss and gradients, compiled loss close to eager.
Exit status 1 when a required kernel is refused, a comparison fails, or a step is not finite.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_ptm.nn import AttentionMask, ModelConfig, Transformer
from lit_ptm.nn import mask as masks

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
}


def cases(B: int, T: int, heads: int):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    padding = (torch.arange(T)[None, :] < lengths[:, None]).cuda()
    starts = torch.sort(torch.randint(1, T, (B, 7), generator=g), 1).values  # eight documents a row
    documents = (torch.arange(T)[None, None, :] >= starts[:, :, None]).sum(1).cuda()
    prefix = torch.randint(1, T, (B,), generator=g).cuda()
    explicit = (torch.rand(B, T, T, generator=g) < 0.5).cuda() | torch.eye(T, dtype=torch.bool).cuda()
    bias = torch.randn(1, heads, T, T, generator=g).cuda()
    # (name, mask, kernel it must get, SDPA backends it must be accepted by)
    yield "encoder, no padding", AttentionMask(), "sdpa", ("flash",)
    yield "causal decoder", AttentionMask(causal=True), "sdpa-causal", ("flash",)
    yield "encoder, padded batch", AttentionMask(padding=padding), "sdpa-masked", ()
    yield "causal, padded batch", AttentionMask(causal=True, padding=padding), "sdpa-masked", ()
    structured = "flex" if masks.USE_FLEX else "sdpa-masked"
    yield "causal, packed documents", AttentionMask(causal=True, documents=documents), structured, ()
    yield "encoder, packed documents", AttentionMask(documents=documents), structured, ()
    yield "prefix LM", AttentionMask(causal=True, prefix_length=prefix), structured, ()
    yield "explicit [B, L, L]", AttentionMask(explicit=explicit), "sdpa-masked", ()
    yield "additive bias", AttentionMask(bias=bias), "sdpa-masked", ()


def timed(fn, n=5) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA device"
    warnings.filterwarnings("ignore")  # SDPA warns for each backend that refuses a call: the table says it
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    failures = 0
    sizes = [a for a in sys.argv[1:] if a.isdigit()]
    B, T = (int(sizes[0]), int(sizes[1])) if len(sizes) == 2 else (8, 1024)
    config = ModelConfig(vocab_size=30522, hidden_size=768, num_layers=2, num_heads=12, max_position_embeddings=T,
                         dropout=0.0, attention_dropout=0.0)
    model = Transformer(config).cuda().train()
    ids = torch.randint(10, 30000, (B, T), device="cuda")

    def step(mask):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, mask).hidden
        out.float().square().mean().backward()
        return out

    print("\n1. kernels (training, no attention dropout)")
    for name, mask, kernel, required in cases(B, T, config.num_heads):
        structured = mask.documents is not None or mask.prefix_length is not None
        got = mask.lower(T, T, flex=structured and masks.USE_FLEX).kernel
        accepted = []
        if got != "flex":
            for backend_name, backend in BACKENDS.items():
                try:
                    with sdpa_kernel([backend]):
                        step(mask)
                    torch.cuda.synchronize()
                    accepted.append(backend_name)
                except RuntimeError:
                    pass
                model.zero_grad(set_to_none=True)
        missing = [r for r in required if r not in accepted] + ([f"kernel {kernel}"] if got != kernel else [])
        failures += bool(missing)
        where = "FlexAttention" if got == "flex" else "SDPA backends: " + ", ".join(accepted)
        print(f"  {name:28s} -> {got:12s} {where:45s} {'MISSING ' + ', '.join(missing) if missing else 'ok'}")
    cached = AttentionMask(causal=True).lower(1, T)
    print(f"  {'cached decoding step (1 x L)':28s} -> {cached.kernel:12s} (explicit mask: is_causal would align top-left)")

    if "flex" in sys.argv[1:]:
        failures += compare_flex(model, ids, B, T, step)
    if "attention" in sys.argv[1:]:  # sections 1 and 2 only
        return 1 if failures else 0
    return failures_of_steps(failures)


def compare_flex(model, ids, B, T, step) -> int:
    failures = 0
    print("\n2. FlexAttention against the dense SDPA mask: fp32 forward + backward (exactness), bf16 step time")
    for name, mask, _, _ in cases(B, T, model.config.num_heads):
        if mask.documents is None and mask.prefix_length is None:
            continue
        outputs, grads = {}, {}
        for label, use_flex in (("flex", True), ("sdpa", False)):
            masks.USE_FLEX = use_flex
            model.zero_grad(set_to_none=True)
            out = model(ids, mask).hidden  # fp32: differences are the kernels', not bf16 rounding
            out.square().mean().backward()
            outputs[label], grads[label] = out.detach(), model.blocks[0].attention.qkv.weight.grad.clone()
        out_err = (outputs["flex"] - outputs["sdpa"]).abs().max().item()
        grad_err = ((grads["flex"] - grads["sdpa"]).norm() / grads["sdpa"].norm()).item()
        seconds = {}
        for label, use_flex in (("flex", True), ("sdpa", False)):
            masks.USE_FLEX = use_flex
            seconds[label] = timed(lambda: step(mask))
            model.zero_grad(set_to_none=True)
        masks.USE_FLEX = False
        ok = out_err < 1e-3 and grad_err < 1e-3
        failures += not ok
        print(f"  {name:28s} fp32 max |out diff| {out_err:.2g}, grad rel. diff {grad_err:.2g} {'ok' if ok else 'MISMATCH'}; "
              f"bf16 step: flex {seconds['flex'] * 1e3:.1f} ms, dense SDPA {seconds['sdpa'] * 1e3:.1f} ms "
              f"(flex {seconds['sdpa'] / seconds['flex']:.2f}x)")

    return failures


def failures_of_steps(failures: int) -> int:
    print("\n3. bf16 training steps, eager and compiled")
    from lit_ptm.objectives import CausalLM, MaskedLM

    base = dict(hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=512, vocab_size=30522)
    for label, make in (("CausalLM", lambda c: CausalLM(ModelConfig(**base), compile=c)),
                        ("MaskedLM+NSP", lambda c: MaskedLM(ModelConfig(**base, type_vocab_size=2), pair_task="nsp", compile=c))):
        losses = {}
        for compiled in (False, True):
            torch.manual_seed(0)
            module = make(compiled)
            module.configure_model()
            module = module.cuda()
            g = torch.Generator(device="cuda").manual_seed(0)
            ids = torch.randint(10, 30000, (16, 256), device="cuda", generator=g)
            labels = torch.where(torch.rand(16, 256, device="cuda", generator=g) < 0.15, ids, -100)
            batch = {"input_ids": ids, "labels": ids if label == "CausalLM" else labels}
            if label != "CausalLM":
                batch["token_type_ids"] = (torch.arange(256, device="cuda") >= 128).long().expand(16, -1)
                batch["pair_labels"] = torch.randint(0, 2, (16,), device="cuda", generator=g)
            module.eval()  # no dropout: eager and compiled compare
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = module.loss_parts(batch).total
            loss.backward()
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(loss)) and all(torch.isfinite(g).all() for g in grads)
            failures += not finite
            losses[compiled] = loss.item()
            print(f"  {label:14s} {'compiled' if compiled else 'eager':8s} loss {loss.item():.4f}, {len(grads)} grads, finite: {finite}")
        close = abs(losses[True] - losses[False]) < 0.02
        failures += not close
        print(f"  {label:14s} compiled vs eager loss: {abs(losses[True] - losses[False]):.2g} {'ok' if close else 'MISMATCH'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
