"""Distillation loss components as module-level pure functions.

Shared conventions:
- Inputs of any float dtype are upcast to at least fp32 (float64 stays float64) before softmax,
  logs and squares: bf16/fp16 logits lose too much in log-space differences.
- Divergences are computed from log-probabilities (log_softmax), never log(softmax(x)).
- Masks are (B, T), truthy = keep. Masked tokens are dropped *before* any arithmetic, so
  garbage (even inf/NaN) at masked positions cannot reach the value or the gradient.
- Every loss is a mean over the kept tokens; with nothing kept it is exactly 0 (still attached
  to the graph so backward() works), never 0/0 = NaN. To normalise over a whole gradient-
  accumulation window, the caller weights each micro-batch mean by its token count.
- Teacher tensors are not detached here: the caller runs the teacher under torch.no_grad().
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Floor for probabilities before log in attention_loss: causally masked keys have probability
# exactly 0, and log(0) = -inf would turn 0 * -inf into NaN.
_PROB_FLOOR = 1e-12
# Added to the teacher variance in feature_loss(norm="std") so constant teacher states do not divide by 0.
_STD_EPS = 1e-6


def _upcast(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_mask(mask: Tensor, x: Tensor) -> None:
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match (B, T) = {tuple(x.shape[:2])}")


def _keep(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T, *rest) -> (N, *rest): the N tokens where mask is truthy (all B*T when mask is None)."""
    if mask is None:
        return x.reshape(-1, *x.shape[2:])
    _check_mask(mask, x)
    mask = mask.bool()
    if bool(mask.all()):
        # Packed sequences never pad: skip the boolean gather, which copies the (N, V) logits.
        return x.reshape(-1, *x.shape[2:])
    return x[mask]


def _kept_rows(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """(B, T) mask -> (K,) indices of the kept rows of x.reshape(B * T, ...); None when all are kept."""
    if mask is None:
        return None
    _check_mask(mask, x)
    flat = mask.reshape(-1).bool()
    return None if bool(flat.all()) else flat.nonzero().squeeze(1)


def _mean(per_token: Tensor) -> Tensor:
    """(N,) -> scalar mean; 0 (not NaN) when N == 0. sum() keeps an empty input on the graph."""
    return per_token.sum() / max(per_token.numel(), 1)


def _kl_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row: (N, V) -> (N,). `p` is passed separately so callers can keep exact zeros."""
    return (p * (log_p - log_q)).sum(-1)


def _same_leading_shape(name_a: str, a: Tensor, name_b: str, b: Tensor, dims: int) -> None:
    if a.shape[:dims] != b.shape[:dims]:
        raise ValueError(
            f"{name_a} shape {tuple(a.shape)} and {name_b} shape {tuple(b.shape)} differ in the first {dims} dims"
        )


def _check_token_pair(
    student: Tensor, teacher: Tensor, what: str, axis: str, width: str, hint: str = ""
) -> None:
    """Student and teacher are both (B, T, X) with the same B, T and X; `what` names them in errors,
    `axis` is the letter of X and `width` its name."""
    if student.dim() != 3 or teacher.dim() != 3:
        raise ValueError(
            f"{what} must be (B, T, {axis}), got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
        )
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student and teacher {what} differ in {width}: student {width} {student.shape[-1]}, "
            f"teacher {width} {teacher.shape[-1]}{hint}"
        )
    _same_leading_shape(f"student {what}", student, f"teacher {what}", teacher, 2)


def shared_columns(logits: Tensor, vocab_size: int | None, who: str = "student") -> Tensor:
    """(B, T, V_model) -> (B, T, vocab_size): the columns of a shared tokenizer's ids, a view (no copy).

    Past them a model's embedding may be padded (to a multiple of 64 or 128, to a different width
    in teacher and student); those columns are no token, so no loss may see them. Returns `logits`
    itself when it is already vocab_size wide or vocab_size is None. `who` names the side in errors.
    """
    width = logits.shape[-1]
    if vocab_size is None or width == vocab_size:
        return logits
    if width < vocab_size:
        raise ValueError(f"{who} logits have {width} columns, fewer than the tokenizer's {vocab_size} tokens")
    return logits[..., :vocab_size]


def ce_targets(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """(B, T) labels -> (B, T-1) bool: the next-token targets `ce_loss` averages over."""
    return labels[:, 1:] != ignore_index


def ce_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy, Hugging Face causal-LM convention.

    Args:
        logits: (B, T, V) student logits.
        labels: (B, T) the input ids, `ignore_index` where no loss is wanted (padding). The shift
            happens here: logits[:, t] predicts labels[:, t + 1].
    Returns:
        Scalar mean over the non-ignored targets (0 if there are none).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    _same_leading_shape("logits", logits, "labels", labels, 2)
    # (B, T, V) -> (B, T-1, V): the last position has no next token to predict.
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    keep = ce_targets(labels, ignore_index)
    # (B, T-1, V) -> (N, V) and (B, T-1) -> (N,)
    kept_logits = _upcast(shift_logits[keep])
    kept_labels = shift_labels[keep]
    nll = F.cross_entropy(kept_logits, kept_labels, reduction="none")
    return _mean(nll)


# Default chunk of kd_loss: a chunk's (n, V) fp32 tensor stays under this many bytes. Small enough
# for the allocator to reuse a freed chunk's memory (larger blocks are fresh mmaps, paid in page
# faults every time), large enough that per-chunk overhead is noise (BENCHMARKS.md, "KD loss memory").
_KD_CHUNK_BYTES = 16 * 2**20


def _scaled(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """(n, V) logits -> a new (n, V) z = logits / T in `dtype`."""
    if logits.dtype == dtype:
        return logits / temperature
    z = logits.to(dtype)
    return z if temperature == 1.0 else z.div_(temperature)


def _kl(z_x: Tensor, z_y: Tensor, need_x: bool = False, need_y: bool = False, kl: Tensor | None = None):
    """KL(x || y) per row with x = softmax(z_x), y = softmax(z_y): (n, V) -> (n,), with
    d/dz_x = x * (log x - log y - KL) and d/dz_y = y - x (the softmax chain rule), each None unless
    asked for. Forward (`kl` None) computes the values; backward passes the forward's `kl`."""
    if kl is None:
        log_x, log_y = F.log_softmax(z_x, dim=-1), F.log_softmax(z_y, dim=-1)
        return _kl_rows(log_x.exp(), log_x, log_y), None, None
    grad_x = grad_y = None
    if need_x:
        log_x = F.log_softmax(z_x, dim=-1)
        grad_x = (log_x - F.log_softmax(z_y, dim=-1)).sub_(kl[:, None]).mul_(log_x.exp_())
    if need_y:
        # softmax, not exp(log_softmax): one fused pass where exp is the costly part.
        grad_y = F.softmax(z_y, dim=-1).sub_(F.softmax(z_x, dim=-1))
    return kl, grad_x, grad_y


def _forward_kl(z_s, z_t, beta, need_s=False, need_t=False, stats=None):
    """KL(t || s) over z = logits / T: (n,) values, (n, k) statistics for backward, d/dz_s, d/dz_t."""
    kl, grad_t, grad_s = _kl(z_t, z_s, need_t, need_s, None if stats is None else stats[:, 0])
    return kl, kl[:, None], grad_s, grad_t


def _reverse_kl(z_s, z_t, beta, need_s=False, need_t=False, stats=None):
    """KL(s || t), the mirror of `_forward_kl`."""
    kl, grad_s, grad_t = _kl(z_s, z_t, need_s, need_t, None if stats is None else stats[:, 0])
    return kl, kl[:, None], grad_s, grad_t


def _jsd(z_s, z_t, beta, need_s=False, need_t=False, stats=None):
    """beta * KL(t || m) + (1 - beta) * KL(s || m), m = beta * t + (1 - beta) * s, 0 < beta < 1.

    m's own dependence on the logits cancels: d/dz_s = (1 - beta) * s * (log s - log m - KL(s || m)),
    and alike for t."""
    log_s, log_t = F.log_softmax(z_s, dim=-1), F.log_softmax(z_t, dim=-1)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    if stats is None:
        kl_tm, kl_sm = _kl_rows(log_t.exp(), log_t, log_m), _kl_rows(log_s.exp(), log_s, log_m)
        return beta * kl_tm + (1.0 - beta) * kl_sm, torch.stack([kl_tm, kl_sm], dim=1), None, None
    grads = []
    for need, log_x, kl, weight in (
        (need_s, log_s, stats[:, 1], 1.0 - beta),
        (need_t, log_t, stats[:, 0], beta),
    ):
        grads.append((log_x - log_m).sub_(kl[:, None]).mul_(log_x.exp()).mul_(weight) if need else None)
    return None, stats, grads[0], grads[1]


# kd_loss's divergences by name; an unknown name fails at the lookup (the config checks names first).
_DIVERGENCES = {"forward_kl": _forward_kl, "reverse_kl": _reverse_kl, "jsd": _jsd}


def _divergence_for(kind: str, beta: float):
    """JSD endpoints follow TRL's generalized_jsd_loss: beta == 0 gives KL(t || s) (= forward_kl)
    and beta == 1 gives KL(s || t) (= reverse_kl). The literal mixture formula is 0 at both
    endpoints (m equals the side that keeps all the weight); these KLs are its limits after
    dividing by the vanishing weight: JSD(beta)/beta -> KL(t || s) as beta -> 0 and
    JSD(beta)/(1 - beta) -> KL(s || t) as beta -> 1. So the scale jumps at the endpoints."""
    divergence = _DIVERGENCES[kind]
    if divergence is _jsd and beta in (0.0, 1.0):
        return _forward_kl if beta == 0.0 else _reverse_kl
    return divergence


class _ChunkedDivergenceSum(torch.autograd.Function):
    """Sum over kept tokens of a per-token divergence, a chunk of tokens at a time.

    Forward keeps only (N, k) per-token statistics of the divergence; backward recomputes each
    chunk's softmaxes and writes the chunk's gradient into the (N, V) result, so no (n, V) tensor
    outlives its chunk and no autograd graph holds any."""

    @staticmethod
    def forward(ctx, student, teacher, rows, temperature, divergence, beta, chunk):
        """student, teacher: (N, V) logits; rows: (K,) kept row indices or None (all N rows)."""
        dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
        kept = student.shape[0] if rows is None else rows.numel()
        total = student.new_zeros((), dtype=dtype)
        # Filled in place: small tensors kept across the loop would pin the heap between the
        # chunks' large blocks, and a CPU process would keep growing by a chunk per chunk.
        stats = student.new_empty((kept, 2), dtype=dtype)
        for start in range(0, kept, chunk):
            s, t = _chunk_rows(student, teacher, rows, start, chunk)
            value, part, _, _ = divergence(
                _scaled(s, temperature, dtype), _scaled(t, temperature, dtype), beta
            )
            total += value.sum()
            stats[start : start + chunk, : part.shape[1]] = part
        ctx.save_for_backward(student, teacher, rows, stats)
        ctx.args = (temperature, divergence, beta, chunk, dtype)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        student, teacher, rows, stats = ctx.saved_tensors
        temperature, divergence, beta, chunk, dtype = ctx.args
        need_s, need_t = ctx.needs_input_grad[:2]
        grads = [
            _empty_grad(student, rows) if need_s else None,
            _empty_grad(teacher, rows) if need_t else None,
        ]
        # d(loss)/d(logits) = upstream * d/dz / T, with z = logits / T.
        scale = grad_total / temperature
        for start in range(0, stats.shape[0], chunk):
            s, t = _chunk_rows(student, teacher, rows, start, chunk)
            z_s, z_t = _scaled(s, temperature, dtype), _scaled(t, temperature, dtype)
            _, _, grad_s, grad_t = divergence(z_s, z_t, beta, need_s, need_t, stats[start : start + chunk])
            for grad, chunk_grad in zip(grads, (grad_s, grad_t)):
                if grad is not None:
                    _write_rows(grad, rows, start, chunk_grad, scale)
        return grads[0], grads[1], None, None, None, None, None


def _chunk_rows(student: Tensor, teacher: Tensor, rows: Tensor | None, start: int, chunk: int):
    """The kept rows start..start+chunk of both (N, V) inputs: views, or a chunk-sized gather."""
    if rows is None:
        return student[start : start + chunk], teacher[start : start + chunk]
    index = rows[start : start + chunk]
    return student.index_select(0, index), teacher.index_select(0, index)


def _empty_grad(x: Tensor, rows: Tensor | None) -> Tensor:
    """(N, V) gradient buffer in x's dtype: dropped rows are 0, kept rows are written chunk by chunk."""
    if rows is None:
        return torch.empty_like(x)
    return torch.zeros_like(x)


def _write_rows(grad: Tensor, rows: Tensor | None, start: int, chunk_grad: Tensor, scale: Tensor) -> None:
    """grad[kept rows start..] = chunk_grad * scale, rounded once to grad's dtype."""
    if rows is None:
        torch.mul(chunk_grad, scale, out=grad[start : start + chunk_grad.shape[0]])
    else:
        grad.index_copy_(0, rows[start : start + chunk_grad.shape[0]], chunk_grad.mul_(scale).to(grad.dtype))


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    kind: str = "forward_kl",
    beta: float = 0.5,
    *,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Logit distillation: T^2 * D(softmax(t / T), softmax(s / T)) per token, mean over kept tokens.

    Computed `chunk_tokens` kept tokens at a time, forward and backward: the loss never holds a full
    (N, V) fp32 tensor, only (chunk_tokens, V) ones, (N, 4) statistics and the (N, V) gradient in the
    logits' dtype. The value and gradients equal the unchunked computation's (up to summation order).

    Args:
        student_logits: (B, T, V).
        teacher_logits: (B, T, V), same vocabulary as the student. Either may be a column slice of
            wider, padded logits (`shared_columns`): rows are read as strided views, never copied whole.
        temperature: T > 0. The T^2 factor keeps gradient magnitudes comparable across T (Hinton et al.).
        mask: (B, T), truthy = token counts (the attention mask); None = all tokens.
        kind: "forward_kl" KL(t || s), "reverse_kl" KL(s || t), or "jsd" (generalised JSD with `beta`,
            endpoints as in `_divergence_for`); another name raises KeyError.
        beta: JSD mixture weight of the teacher, in [0, 1]; only used by kind="jsd".
        chunk_tokens: tokens per chunk; None = as many as keep one (n, V) fp32 chunk under 64 MiB.
    Returns:
        Scalar; 0 for identical logits and for an all-masked batch.
    """
    _check_token_pair(student_logits, teacher_logits, "logits", "V", "vocab size")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    divergence = _divergence_for(kind, beta)
    vocab = student_logits.shape[-1]
    if chunk_tokens is None:
        chunk_tokens = max(1, _KD_CHUNK_BYTES // (4 * vocab))
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens!r}")
    # (B, T, V) -> (N, V), views for contiguous logits; rows: (K,) kept token indices, None = all.
    student, teacher = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    rows = _kept_rows(mask, student_logits)
    kept = student.shape[0] if rows is None else rows.numel()
    total = _ChunkedDivergenceSum.apply(student, teacher, rows, temperature, divergence, beta, chunk_tokens)
    return total / max(kept, 1) * temperature**2


def _mse(s: Tensor, t: Tensor) -> Tensor:
    """(N, H) -> (N,) mean squared difference over H."""
    return (s - t).pow(2).mean(-1)


def _layernorm_mse(s: Tensor, t: Tensor) -> Tensor:
    width = (s.shape[-1],)
    return _mse(F.layer_norm(s, width), F.layer_norm(t, width))


def _std_mse(s: Tensor, t: Tensor) -> Tensor:
    # An empty selection has no variance; the mean is 0 anyway, so any finite value does.
    variance = t.detach().var(unbiased=False) if t.numel() > 0 else t.new_ones(())
    return _mse(s, t) / (variance + _STD_EPS)


def _cosine_distance(s: Tensor, t: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(s, t, dim=-1)


# feature_loss's normalisations by name: (N, H) pair -> (N,); an unknown name fails at the lookup.
_FEATURE_DISTANCES = {"none": _mse, "layernorm": _layernorm_mse, "std": _std_mse, "cosine": _cosine_distance}


def feature_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    norm: str = "layernorm",
    mask: Tensor | None = None,
) -> Tensor:
    """Hidden-state matching, mean over kept tokens.

    Args:
        student_hidden: (B, T, H), already projected to the teacher's width H.
        teacher_hidden: (B, T, H).
        norm: how scale is removed before comparing, so a raw MSE in the thousands cannot swamp a
            KD loss of ~2:
            "none": MSE, mean over H (scale-dependent, for reference);
            "layernorm": MSE of layer_norm(.) of both sides, no affine (per-token scale removed);
            "std": MSE / (Var(teacher) + eps), the variance taken over every element of the kept
                teacher tokens (all tokens x all H, not per dimension, so it is defined even for a
                single token) and detached: it is a normaliser, not something to optimise;
            "cosine": 1 - cosine similarity over H.
        mask: (B, T), truthy = token counts; None = all tokens.
    Returns:
        Scalar; 0 for identical states and for an all-masked batch.
    """
    _check_token_pair(
        student_hidden, teacher_hidden, "hidden states", "H", "width", " (project the student first)"
    )
    per_token = _FEATURE_DISTANCES[norm]
    # (B, T, H) -> (N, H)
    s = _upcast(_keep(student_hidden, mask))
    t = _upcast(_keep(teacher_hidden, mask))
    return _mean(per_token(s, t))


def attention_loss(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(teacher || student) between head-averaged attention distributions, mean over kept query rows.

    Args:
        student_attn: (B, Hs, T, T) attention probabilities (rows sum to 1 over the last, key axis).
        teacher_attn: (B, Ht, T, T); the head count may differ from the student's.
        mask: (B, T), truthy = query row counts; None = all rows.
    Returns:
        Scalar; 0 for identical maps and for an all-masked batch. Keys with probability 0
        (causal or padding mask) add nothing, and a student 0 under a teacher > 0 is floored
        at 1e-12 instead of giving inf.
    """
    if student_attn.dim() != 4 or teacher_attn.dim() != 4:
        raise ValueError(
            f"attention maps must be (B, H, T, T), got student {tuple(student_attn.shape)}, "
            f"teacher {tuple(teacher_attn.shape)}"
        )
    if student_attn.shape[0] != teacher_attn.shape[0] or student_attn.shape[2:] != teacher_attn.shape[2:]:
        raise ValueError(
            f"attention maps differ beyond the head count: student {tuple(student_attn.shape)}, "
            f"teacher {tuple(teacher_attn.shape)}"
        )
    # Head-average each side so differing head counts compare: (B, H, T, T) -> (B, T, T).
    s = _upcast(student_attn).mean(1)
    t = _upcast(teacher_attn).mean(1)
    # (B, T, T) -> (N, T): the kept query rows.
    s, t = _keep(s, mask), _keep(t, mask)
    # Rows of a bf16 model sum to 1 only within ~2e-3, enough to make a near-zero KL negative:
    # renormalise after the upcast, so the KL of two distributions is >= 0.
    s = s / s.sum(-1, keepdim=True).clamp_min(_PROB_FLOOR)
    t = t / t.sum(-1, keepdim=True).clamp_min(_PROB_FLOOR)
    log_s = s.clamp_min(_PROB_FLOOR).log()
    log_t = t.clamp_min(_PROB_FLOOR).log()
    # p = t exactly (not exp(log_t)), so zero-probability keys contribute exactly 0.
    return _mean(_kl_rows(t, log_t, log_s))
