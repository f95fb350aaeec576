"""Cross-entropy fused with the output projection, computed in row chunks.

The plain path materialises logits [N, V], their log-softmax [N, V] and the gradient [N, V]: for
GPT-2's vocabulary at 32 x 128 tokens that is three 0.8 GB buffers a step, allocated and faulted in
anew each step. Here the forward pass walks the rows in chunks, turns each chunk's logits into its
gradient in place (softmax - one-hot) and immediately contracts it into the gradients of the hidden
states and of the weight, which are all the backward pass needs: one chunk-sized buffer, reused.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 26  # logits per chunk (256 MB in fp32): large enough for efficient matmuls
IGNORE_INDEX = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, want_argmax: bool):
        # hidden [N, H], weight [V, H], bias [V] | None, targets [N] (-100: an ignored row) -> mean loss
        # over the other rows, argmax [N] | None
        device_type = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        needs_grad = any(ctx.needs_input_grad[:3])  # hidden, weight or bias (e.g. bias-only fine-tuning)
        N, V = hidden.size(0), weight.size(0)
        rows = max(1, CHUNK_ELEMENTS // V)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros(V, dtype=torch.float32, device=hidden.device) if needs_grad and bias is not None else None
        argmax = torch.empty(N, dtype=torch.long, device=hidden.device) if want_argmax else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Ignored rows (padding rows that keep a compiled shape static) add nothing to the loss or the
        # gradients; multiplying by 1.0 elsewhere keeps the other rows' numbers bit for bit.
        counted = targets != IGNORE_INDEX
        count = counted.sum()
        with torch.autocast(device_type, enabled=False):
            for start in range(0, N, rows):
                h = hidden[start : start + rows].to(compute_dtype)
                keep = counted[start : start + rows]
                t = targets[start : start + rows].clamp(min=0)
                logits = (h @ w.t()).float()  # (n, V)
                if bias is not None:
                    logits += bias.float()
                if want_argmax:
                    argmax[start : start + rows] = logits.argmax(1)
                probs = torch.softmax(logits, dim=1)  # (n, V); softmax's vectorised exp beats exp_ in place
                p_target = probs.gather(1, t[:, None]).squeeze(1)
                row_loss = -torch.log(p_target)
                tiny = p_target < 1e-30  # where fp32 probabilities lose precision, take the exact form
                if torch.compiler.is_compiling():
                    # Branch-free under torch.compile (a data-dependent `if` would break the graph); the
                    # compiler fuses the extra reduction into the softmax's pass over the chunk.
                    exact = torch.logsumexp(logits, 1) - logits.gather(1, t[:, None]).squeeze(1)
                    row_loss = torch.where(tiny, exact, row_loss)
                elif tiny.any():
                    row_loss[tiny] = torch.logsumexp(logits[tiny], 1) - logits[tiny].gather(1, t[tiny, None]).squeeze(1)
                loss += (row_loss * keep).sum()
                del logits
                if not needs_grad:
                    continue
                grad = probs
                grad[torch.arange(len(t), device=grad.device), t] -= 1.0  # d(loss_i)/d(logits_i), unscaled
                grad *= keep[:, None]
                g = grad.to(compute_dtype)
                grad_hidden[start : start + rows] = g @ w
                grad_weight += g.t() @ h
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
        count = count.clamp(min=1)
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), grad_bias, count)
            ctx.has_bias = bias is not None
        if want_argmax:
            ctx.mark_non_differentiable(argmax)
        return loss / count, argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_argmax):
        grad_hidden, grad_weight, grad_bias, count = ctx.saved_tensors
        scale = grad_loss / count  # the mean over counted rows, and whatever came after the loss
        return (
            grad_hidden * scale.to(grad_hidden.dtype),
            grad_weight * scale.to(grad_weight.dtype),
            grad_bias * scale if ctx.has_bias else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, want_argmax: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` (gather the predicted rows
    first; a row with target -100 is ignored), and optionally the argmax per row, without materialising
    the logits [N, V]."""
    if hidden.size(0) == 0:
        raise ValueError("no predicted positions in the batch")
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, want_argmax)
