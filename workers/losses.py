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

from workers.loss_config import FEATURE_NORMS, KD_KINDS

# Floor for probabilities before log in attention_loss: causally masked keys have probability
# exactly 0, and log(0) = -inf would turn 0 * -inf into NaN.
_PROB_FLOOR = 1e-12
# Added to the teacher variance in feature_loss(norm="std") so constant teacher states do not divide by 0.
_STD_EPS = 1e-6


def _upcast(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _keep(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T, *rest) -> (N, *rest): the N tokens where mask is truthy (all B*T when mask is None)."""
    if mask is None:
        return x.reshape(-1, *x.shape[2:])
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match (B, T) = {tuple(x.shape[:2])}")
    mask = mask.bool()
    if bool(mask.all()):
        # Packed sequences never pad: skip the boolean gather, which copies the (N, V) logits.
        return x.reshape(-1, *x.shape[2:])
    return x[mask]


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
    keep = shift_labels != ignore_index
    # (B, T-1, V) -> (N, V) and (B, T-1) -> (N,)
    kept_logits = _upcast(shift_logits[keep])
    kept_labels = shift_labels[keep]
    nll = F.cross_entropy(kept_logits, kept_labels, reduction="none")
    return _mean(nll)


def _token_divergence(log_s: Tensor, log_t: Tensor, kind: str, beta: float) -> Tensor:
    """Per-token divergence between teacher and student distributions: (N, V) log-probs -> (N,).

    forward_kl = KL(t || s) (mean-seeking); reverse_kl = KL(s || t) (mode-seeking);
    jsd = beta * KL(t || m) + (1 - beta) * KL(s || m) with m = beta * t + (1 - beta) * s.

    JSD endpoints follow TRL's generalized_jsd_loss: beta == 0 gives KL(t || s) (= forward_kl)
    and beta == 1 gives KL(s || t) (= reverse_kl). The literal mixture formula is 0 at both
    endpoints (m equals the side that keeps all the weight); these KLs are its limits after
    dividing by the vanishing weight: JSD(beta)/beta -> KL(t || s) as beta -> 0 and
    JSD(beta)/(1 - beta) -> KL(s || t) as beta -> 1. So the scale jumps at the endpoints.
    """
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl_rows(log_t.exp(), log_t, log_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl_rows(log_s.exp(), log_s, log_t)
    # log m = logsumexp(log t + log beta, log s + log(1 - beta)), stacked on a new leading axis.
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)
    return beta * _kl_rows(log_t.exp(), log_t, log_m) + (1.0 - beta) * _kl_rows(log_s.exp(), log_s, log_m)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    kind: str = "forward_kl",
    beta: float = 0.5,
) -> Tensor:
    """Logit distillation: T^2 * D(softmax(t / T), softmax(s / T)) per token, mean over kept tokens.

    Args:
        student_logits: (B, T, V).
        teacher_logits: (B, T, V), same vocabulary as the student.
        temperature: T > 0. The T^2 factor keeps gradient magnitudes comparable across T (Hinton et al.).
        mask: (B, T), truthy = token counts (the attention mask); None = all tokens.
        kind: "forward_kl" KL(t || s), "reverse_kl" KL(s || t), or "jsd" (generalised JSD with `beta`,
            endpoints as in `_token_divergence`).
        beta: JSD mixture weight of the teacher, in [0, 1]; only used by kind="jsd".
    Returns:
        Scalar; 0 for identical logits and for an all-masked batch.
    """
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError(
            f"logits must be (B, T, V), got student {tuple(student_logits.shape)}, "
            f"teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student and teacher must share a vocabulary: student vocab size {student_logits.shape[-1]}, "
            f"teacher vocab size {teacher_logits.shape[-1]}"
        )
    _same_leading_shape("student_logits", student_logits, "teacher_logits", teacher_logits, 2)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if kind not in KD_KINDS:
        raise ValueError(f"kind must be one of {list(KD_KINDS)}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    # (B, T, V) -> (N, V)
    log_s = F.log_softmax(_upcast(_keep(student_logits, mask)) / temperature, dim=-1)
    log_t = F.log_softmax(_upcast(_keep(teacher_logits, mask)) / temperature, dim=-1)
    return _mean(_token_divergence(log_s, log_t, kind, beta)) * temperature**2


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
    if student_hidden.dim() != 3 or teacher_hidden.dim() != 3:
        raise ValueError(
            f"hidden states must be (B, T, H), got student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)}"
        )
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"hidden widths differ: student width {student_hidden.shape[-1]}, "
            f"teacher width {teacher_hidden.shape[-1]} (project the student first)"
        )
    _same_leading_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden, 2)
    if norm not in FEATURE_NORMS:
        raise ValueError(f"norm must be one of {list(FEATURE_NORMS)}, got {norm!r}")
    # (B, T, H) -> (N, H)
    s = _upcast(_keep(student_hidden, mask))
    t = _upcast(_keep(teacher_hidden, mask))
    if norm == "cosine":
        return _mean(1.0 - F.cosine_similarity(s, t, dim=-1))
    if norm == "layernorm":
        width = (s.shape[-1],)
        s, t = F.layer_norm(s, width), F.layer_norm(t, width)
    per_token = (s - t).pow(2).mean(-1)
    if norm == "std":
        # An empty selection has no variance; the mean below is 0 anyway, so any finite value does.
        variance = t.detach().var(unbiased=False) if t.numel() > 0 else t.new_ones(())
        per_token = per_token / (variance + _STD_EPS)
    return _mean(per_token)


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
    log_s = s.clamp_min(_PROB_FLOOR).log()
    log_t = t.clamp_min(_PROB_FLOOR).log()
    # p = t exactly (not exp(log_t)), so zero-probability keys contribute exactly 0.
    return _mean(_kl_rows(t, log_t, log_s))
