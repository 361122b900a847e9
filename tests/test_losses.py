"""Property tests of the loss components against hand-written float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from workers.losses import attention_loss, ce_loss, feature_loss, kd_loss

B, T, V, H = 2, 5, 7, 6
KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0)]
NORMS = ["none", "layernorm", "std", "cosine"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def token_mask():
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False  # right padding
    mask[1, 0] = False  # left padding
    return mask


def causal_attention(heads, seed):
    """(B, heads, T, T) softmax rows with exact zeros above the diagonal, as eager attention returns."""
    scores = randn(B, heads, T, T, seed=seed)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return scores.masked_fill(future, -math.inf).softmax(-1)


# ---------------------------------------------------------------- hand references (python floats)


def softmax_list(row, temperature=1.0):
    top = max(row)
    exps = [math.exp((x - top) / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl_list(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_ce(logits, labels, ignore_index=-100):
    total, count = 0.0, 0
    for b in range(len(labels)):
        for t in range(len(labels[b]) - 1):
            target = labels[b][t + 1]
            if target == ignore_index:
                continue
            total -= math.log(softmax_list(logits[b][t])[target])
            count += 1
    return total / max(count, 1)


def ref_kd(student, teacher, temperature, mask, kind, beta):
    total, count = 0.0, 0
    for b in range(len(student)):
        for t in range(len(student[b])):
            if not mask[b][t]:
                continue
            p = softmax_list(teacher[b][t], temperature)
            q = softmax_list(student[b][t], temperature)
            if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
                value = kl_list(p, q)
            elif kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
                value = kl_list(q, p)
            else:
                m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
                value = beta * kl_list(p, m) + (1 - beta) * kl_list(q, m)
            total += value * temperature**2
            count += 1
    return total / max(count, 1)


def autograd_kd(student, teacher, temperature, mask, kind, beta):
    """Unchunked reference through torch's own autograd: F.kl_div on full (N, V) log-probs."""
    keep = mask.reshape(-1)
    log_q = (student.reshape(-1, student.shape[-1])[keep] / temperature).log_softmax(-1)
    log_p = (teacher.reshape(-1, teacher.shape[-1])[keep] / temperature).log_softmax(-1)

    def kl(log_x, log_y):  # KL(x || y) per row
        return F.kl_div(log_y, log_x, reduction="none", log_target=True).sum(-1)

    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        rows = kl(log_p, log_q)
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        rows = kl(log_q, log_p)
    else:
        log_m = (beta * log_p.exp() + (1 - beta) * log_q.exp()).log()
        rows = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    return rows.sum() / max(rows.numel(), 1) * temperature**2


def ref_feature(student, teacher, norm, mask):
    kept_s = [student[b][t] for b in range(len(student)) for t in range(len(student[b])) if mask[b][t]]
    kept_t = [teacher[b][t] for b in range(len(teacher)) for t in range(len(teacher[b])) if mask[b][t]]

    def layer_norm(x):
        mu = sum(x) / len(x)
        var = sum((v - mu) ** 2 for v in x) / len(x)
        return [(v - mu) / math.sqrt(var + 1e-5) for v in x]

    if norm == "std":
        flat = [v for row in kept_t for v in row]
        mean = sum(flat) / len(flat)
        variance = sum((v - mean) ** 2 for v in flat) / len(flat)
    per_token = []
    for s, t in zip(kept_s, kept_t):
        if norm == "cosine":
            dot = sum(a * b for a, b in zip(s, t))
            norms = math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t))
            per_token.append(1.0 - dot / norms)
            continue
        if norm == "layernorm":
            s, t = layer_norm(s), layer_norm(t)
        mse = sum((a - b) ** 2 for a, b in zip(s, t)) / len(s)
        per_token.append(mse / (variance + 1e-6) if norm == "std" else mse)
    return sum(per_token) / max(len(per_token), 1)


def ref_attention(student, teacher, mask):
    """student/teacher: nested lists (B, heads, T, T)."""
    total, count = 0.0, 0
    for b in range(len(student)):
        n_s, n_t, n_q = len(student[b]), len(teacher[b]), len(student[b][0])
        for q in range(n_q):
            if not mask[b][q]:
                continue
            s_row = [sum(student[b][h][q][k] for h in range(n_s)) / n_s for k in range(n_q)]
            t_row = [sum(teacher[b][h][q][k] for h in range(n_t)) / n_t for k in range(n_q)]
            total += sum(t * (math.log(t) - math.log(max(s, 1e-12))) for t, s in zip(t_row, s_row) if t > 0)
            count += 1
    return total / max(count, 1)


# ---------------------------------------------------------------- ce


def test_ce_matches_hand_reference_with_shift_and_ignore_index():
    logits = randn(B, T, V, seed=1, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=gen(2))
    labels[0, 3:] = -100
    got = ce_loss(logits, labels)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ce(logits.tolist(), labels.tolist()), rel=1e-12)


def test_ce_is_hf_convention():
    """Same value as transformers' ForCausalLMLoss would give: shift inside, mean over kept targets."""
    logits = randn(B, T, V, seed=1)
    labels = torch.randint(0, V, (B, T), generator=gen(2))
    labels[1, :2] = -100
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ce_loss(logits, labels), expected)


def test_ce_of_a_confident_correct_prediction_is_zero():
    labels = torch.randint(0, V, (B, T), generator=gen(3))
    logits = torch.full((B, T, V), -1e4)
    logits[:, :-1].scatter_(-1, labels[:, 1:, None], 1e4)
    assert ce_loss(logits, labels).item() == 0.0


def test_ce_all_ignored_is_exactly_zero_with_finite_grad():
    logits = randn(B, T, V, seed=1).requires_grad_()
    loss = ce_loss(logits, torch.full((B, T), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_ignored_positions_do_not_change_value():
    logits = randn(B, T, V, seed=1)
    labels = torch.randint(0, V, (B, T), generator=gen(2))
    labels[0, 3:] = -100
    garbage = logits.clone()
    garbage[0, 2:] = math.nan  # positions 2.. of row 0 only predict ignored labels (3..)
    assert torch.equal(ce_loss(garbage, labels), ce_loss(logits, labels))


def test_ce_upcasts_half_precision():
    logits = randn(B, T, V, seed=1)
    labels = torch.randint(0, V, (B, T), generator=gen(2))
    loss = ce_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ce_loss(logits.bfloat16().float(), labels).item(), rel=1e-6)


# ---------------------------------------------------------------- kd


@pytest.mark.parametrize("kind, beta", KINDS)
def test_kd_matches_hand_reference(kind, beta):
    student = randn(B, T, V, seed=1, dtype=torch.float64)
    teacher = randn(B, T, V, seed=2, dtype=torch.float64) * 2
    mask = token_mask()
    got = kd_loss(student, teacher, 1.7, mask=mask, kind=kind, beta=beta)
    expected = ref_kd(student.tolist(), teacher.tolist(), 1.7, mask.tolist(), kind, beta)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kind, beta", KINDS)
def test_kd_identical_logits_give_zero(kind, beta):
    logits = randn(B, T, V, seed=1)
    assert kd_loss(logits, logits.clone(), 2.0, kind=kind, beta=beta).abs().item() < 1e-6


def test_jsd_half_is_the_symmetric_jsd():
    student = randn(B, T, V, seed=1, dtype=torch.float64)
    teacher = randn(B, T, V, seed=2, dtype=torch.float64)
    p = teacher.softmax(-1)
    q = student.softmax(-1)
    m = (p + q) / 2
    symmetric = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    got = kd_loss(student, teacher, 1.0, kind="jsd", beta=0.5)
    assert torch.allclose(got, symmetric.mean())
    swapped = kd_loss(teacher, student, 1.0, kind="jsd", beta=0.5)
    assert torch.allclose(got, swapped)


def test_jsd_endpoints_are_the_closed_form_kls():
    """TRL convention: beta=0 is KL(teacher || student), beta=1 is KL(student || teacher)."""
    student = randn(B, T, V, seed=1, dtype=torch.float64)
    teacher = randn(B, T, V, seed=2, dtype=torch.float64)
    log_p = teacher.log_softmax(-1)
    log_q = student.log_softmax(-1)
    forward = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    reverse = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    assert not torch.allclose(forward, reverse)
    assert torch.allclose(kd_loss(student, teacher, 1.0, kind="jsd", beta=0.0), forward)
    assert torch.allclose(kd_loss(student, teacher, 1.0, kind="jsd", beta=1.0), reverse)
    assert torch.allclose(kd_loss(student, teacher, 1.0, kind="forward_kl"), forward)
    assert torch.allclose(kd_loss(student, teacher, 1.0, kind="reverse_kl"), reverse)


def test_jsd_endpoints_are_limits_of_the_scaled_mixture_formula():
    """Why the endpoints are those KLs: JSD(beta)/beta -> KL(t||s) and JSD(beta)/(1-beta) -> KL(s||t)."""
    student = randn(B, T, V, seed=1, dtype=torch.float64)
    teacher = randn(B, T, V, seed=2, dtype=torch.float64)
    small = 1e-6
    near_zero = kd_loss(student, teacher, 1.0, kind="jsd", beta=small) / small
    near_one = kd_loss(student, teacher, 1.0, kind="jsd", beta=1 - small) / small
    assert near_zero.item() == pytest.approx(
        kd_loss(student, teacher, 1.0, kind="jsd", beta=0.0).item(), rel=1e-4
    )
    assert near_one.item() == pytest.approx(
        kd_loss(student, teacher, 1.0, kind="jsd", beta=1.0).item(), rel=1e-4
    )


def test_kd_temperature_squared_scaling():
    student = randn(B, T, V, seed=1, dtype=torch.float64)
    teacher = randn(B, T, V, seed=2, dtype=torch.float64)
    # Scaling both logits by T cancels the softmax temperature, leaving exactly the T^2 factor.
    assert torch.allclose(kd_loss(student * 3, teacher * 3, 3.0), 9 * kd_loss(student, teacher, 1.0))


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("chunk", [1, None])
def test_kd_all_masked_is_exactly_zero_with_finite_grad(kind, beta, chunk):
    student = randn(B, T, V, seed=1).requires_grad_()
    teacher = randn(B, T, V, seed=2).requires_grad_()
    mask = torch.zeros(B, T, dtype=torch.bool)
    loss = kd_loss(student, teacher, 2.0, mask=mask, kind=kind, beta=beta, chunk_tokens=chunk)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    assert torch.equal(teacher.grad, torch.zeros_like(teacher))


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("chunk", [3, None])
def test_kd_masked_positions_do_not_change_value_or_grad(kind, beta, chunk):
    mask = token_mask()
    student = randn(B, T, V, seed=1).requires_grad_()
    teacher = randn(B, T, V, seed=2)
    clean = kd_loss(student, teacher, 2.0, mask=mask, kind=kind, beta=beta, chunk_tokens=chunk)
    clean.backward()
    garbage_s = student.detach().masked_fill(~mask[..., None], math.inf).requires_grad_()
    garbage_t = teacher.clone().masked_fill(~mask[..., None], math.nan)
    dirty = kd_loss(garbage_s, garbage_t, 2.0, mask=mask, kind=kind, beta=beta, chunk_tokens=chunk)
    assert torch.equal(clean, dirty)
    dirty.backward()
    assert torch.equal(garbage_s.grad, student.grad)


@pytest.mark.parametrize("kind, beta", KINDS)
def test_kd_gradients_are_finite_and_nonzero(kind, beta):
    student = (randn(B, T, V, seed=1) * 30).requires_grad_()  # peaked distributions
    kd_loss(student, randn(B, T, V, seed=2) * 30, 1.0, mask=token_mask(), kind=kind, beta=beta).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_kd_is_a_token_mean_so_micro_batches_combine_by_token_count():
    """Normalised by tokens: the batch value is the token-weighted mean of its parts, whatever the mask sizes."""
    mask = token_mask()
    mask[1, 1:4] = False  # 1 token in row 1, 3 in row 0
    student, teacher = randn(B, T, V, seed=1), randn(B, T, V, seed=2)
    whole = kd_loss(student, teacher, 2.0, mask=mask)
    parts = [kd_loss(student[i : i + 1], teacher[i : i + 1], 2.0, mask=mask[i : i + 1]) for i in range(B)]
    counts = mask.sum(1)
    assert torch.allclose(whole, sum(p * n for p, n in zip(parts, counts)) / counts.sum())


def test_kd_upcasts_bf16():
    student, teacher = randn(B, T, V, seed=1).bfloat16(), randn(B, T, V, seed=2).bfloat16()
    loss = kd_loss(student, teacher, 2.0)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, kd_loss(student.float(), teacher.float(), 2.0))


def test_kd_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="student vocab size 7.*teacher vocab size 9"):
        kd_loss(randn(B, T, 7), randn(B, T, 9), 2.0)


@pytest.mark.parametrize(
    "kwargs, word", [({"temperature": 0.0}, "temperature"), ({"kind": "jsd", "beta": 1.5}, "beta")]
)
def test_kd_bad_arguments(kwargs, word):
    """The loss's own preconditions: a temperature <= 0 or a beta outside [0, 1] would compute garbage."""
    args = {"temperature": 2.0, **kwargs}
    with pytest.raises(ValueError, match=word):
        kd_loss(randn(B, T, V), randn(B, T, V), **args)


def test_kd_unknown_kind_computes_nothing():
    with pytest.raises(KeyError, match="'kl'"):
        kd_loss(randn(B, T, V), randn(B, T, V), 2.0, kind="kl")


@pytest.mark.parametrize("chunk", [0, -1])
def test_kd_chunk_must_be_positive(chunk):
    with pytest.raises(ValueError, match="chunk_tokens"):
        kd_loss(randn(B, T, V), randn(B, T, V), 2.0, chunk_tokens=chunk)


def test_kd_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask shape"):
        kd_loss(randn(B, T, V), randn(B, T, V), 2.0, mask=torch.ones(B, T + 1, dtype=torch.bool))


# ---------------------------------------------------------------- kd, chunked

CB, CT, CV = 3, 7, 11  # N = 21 tokens; chunked_mask keeps 15


def chunked_mask():
    mask = torch.ones(CB, CT, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, :3] = False
    mask[2, 6] = False
    return mask


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 5, 15, 21, 64, None])  # 4 divides neither 15 nor 21; 64 > N
def test_kd_chunked_equals_unchunked_autograd_with_grads(kind, beta, masked, chunk):
    """Value and both logits' gradients equal torch autograd's on the full (N, V) log-probs."""
    mask = chunked_mask() if masked else torch.ones(CB, CT, dtype=torch.bool)
    student = (randn(CB, CT, CV, seed=1, dtype=torch.float64) * 3).requires_grad_()
    teacher = (randn(CB, CT, CV, seed=2, dtype=torch.float64) * 3).requires_grad_()
    got = kd_loss(
        student, teacher, 1.7, mask=mask if masked else None, kind=kind, beta=beta, chunk_tokens=chunk
    )
    got_s, got_t = torch.autograd.grad(got, (student, teacher))
    expected = autograd_kd(student, teacher, 1.7, mask, kind, beta)
    exp_s, exp_t = torch.autograd.grad(expected, (student, teacher))
    assert got.dtype == torch.float64
    assert abs(got.item() - expected.item()) < 1e-12
    assert torch.allclose(got_s, exp_s, rtol=0, atol=1e-12)
    assert torch.allclose(got_t, exp_t, rtol=0, atol=1e-12)
    assert got_s.abs().sum() > 0 and got_t.abs().sum() > 0
    # Dropped tokens get exactly 0, not a tiny number.
    assert torch.equal(got_s[~mask], torch.zeros_like(got_s[~mask]))


@pytest.mark.parametrize("kind, beta", KINDS)
def test_kd_chunk_sizes_agree_on_value_and_grad(kind, beta):
    """Every chunking of the same fp32 batch gives the same loss and gradient up to summation order."""
    mask = chunked_mask()
    results = []
    for chunk in (1, 2, 4, 7, 1000):
        student = randn(CB, CT, CV, seed=3).requires_grad_()
        loss = kd_loss(
            student, randn(CB, CT, CV, seed=4), 2.0, mask=mask, kind=kind, beta=beta, chunk_tokens=chunk
        )
        loss.backward()
        results.append((loss.detach(), student.grad))
    for loss, grad in results[1:]:
        assert torch.allclose(loss, results[0][0], rtol=1e-6, atol=0)
        assert torch.allclose(grad, results[0][1], rtol=0, atol=1e-7)


def test_kd_grad_is_in_the_logits_dtype_and_matches_fp32():
    """bf16 logits (a bf16 run) get a bf16 gradient, computed in fp32 and rounded once."""
    student32 = randn(B, T, V, seed=1).bfloat16().float().requires_grad_()
    teacher = randn(B, T, V, seed=2).bfloat16()
    kd_loss(student32, teacher.float(), 2.0, mask=token_mask(), chunk_tokens=3).backward()
    student16 = student32.detach().bfloat16().requires_grad_()
    kd_loss(student16, teacher, 2.0, mask=token_mask(), chunk_tokens=3).backward()
    assert student16.grad.dtype == torch.bfloat16
    assert torch.equal(student16.grad, student32.grad.bfloat16())


def test_kd_noncontiguous_logits():
    """A strided view (e.g. logits[:, :-1]) is reshaped by a copy, and the gradient lands in place."""
    full = randn(B, T + 1, V, seed=1, dtype=torch.float64).requires_grad_()
    teacher = randn(B, T, V, seed=2, dtype=torch.float64)
    kd_loss(full[:, :-1], teacher, 2.0, chunk_tokens=3).backward()
    expected_full = full.detach().clone().requires_grad_()
    autograd_kd(
        expected_full[:, :-1], teacher, 2.0, torch.ones(B, T, dtype=torch.bool), "forward_kl", 0.5
    ).backward()
    assert torch.allclose(full.grad, expected_full.grad, rtol=0, atol=1e-12)
    assert torch.equal(full.grad[:, -1], torch.zeros_like(full.grad[:, -1]))


def test_kd_chunked_hand_reference():
    """A chunk of 2 kept tokens over a batch of 8 kept tokens, against the python-float reference."""
    student = randn(B, T, V, seed=5, dtype=torch.float64)
    teacher = randn(B, T, V, seed=6, dtype=torch.float64) * 2
    mask = token_mask()
    for kind, beta in KINDS:
        got = kd_loss(student, teacher, 1.3, mask=mask, kind=kind, beta=beta, chunk_tokens=2)
        expected = ref_kd(student.tolist(), teacher.tolist(), 1.3, mask.tolist(), kind, beta)
        assert got.item() == pytest.approx(expected, rel=1e-10), kind


# ---------------------------------------------------------------- feature


@pytest.mark.parametrize("norm", NORMS)
def test_feature_matches_hand_reference(norm):
    student = randn(B, T, H, seed=1, dtype=torch.float64)
    teacher = randn(B, T, H, seed=2, dtype=torch.float64) * 3 + 1
    mask = token_mask()
    got = feature_loss(student, teacher, norm=norm, mask=mask)
    expected = ref_feature(student.tolist(), teacher.tolist(), norm, mask.tolist())
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("norm", NORMS)
def test_feature_identical_states_give_zero(norm):
    hidden = randn(B, T, H, seed=1)
    assert feature_loss(hidden, hidden.clone(), norm=norm).abs().item() < 1e-6


@pytest.mark.parametrize("norm", NORMS)
def test_feature_all_masked_is_exactly_zero_with_finite_grad(norm):
    student = randn(B, T, H, seed=1).requires_grad_()
    loss = feature_loss(student, randn(B, T, H, seed=2), norm=norm, mask=torch.zeros(B, T, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("norm", NORMS)
def test_feature_masked_positions_do_not_change_value(norm):
    mask = token_mask()
    student, teacher = randn(B, T, H, seed=1), randn(B, T, H, seed=2)
    clean = feature_loss(student, teacher, norm=norm, mask=mask)
    garbage_s = student.masked_fill(~mask[..., None], 1e30).requires_grad_()
    garbage_t = teacher.masked_fill(~mask[..., None], math.nan)
    dirty = feature_loss(garbage_s, garbage_t, norm=norm, mask=mask)
    assert torch.equal(clean, dirty)
    dirty.backward()
    assert torch.isfinite(garbage_s.grad).all()


def test_feature_normalised_losses_stay_order_one_when_teacher_scales_up():
    student, teacher = randn(4, 16, 32, seed=1), randn(4, 16, 32, seed=2)
    for norm in ("layernorm", "std", "cosine"):
        small = feature_loss(student, teacher, norm=norm).item()
        big = feature_loss(student, teacher * 1000, norm=norm).item()
        assert 0.1 < small < 5.0 and 0.1 < big < 5.0, (norm, small, big)
    ratio = feature_loss(student, teacher * 1000, norm="none") / feature_loss(student, teacher, norm="none")
    assert 1e5 < ratio.item() < 1e7


def test_feature_std_uses_teacher_variance_over_kept_tokens():
    student = torch.zeros(1, 3, 4)
    teacher = randn(1, 3, 4, seed=2)
    mask = torch.tensor([[True, True, False]])
    teacher_with_outlier = teacher.clone()
    teacher_with_outlier[0, 2] = 1e6  # masked: must not inflate the variance
    kept = teacher[0, :2]
    expected = (kept.pow(2).mean(-1) / (kept.var(unbiased=False) + 1e-6)).mean()
    assert torch.allclose(feature_loss(student, teacher_with_outlier, norm="std", mask=mask), expected)


def test_feature_std_treats_the_teacher_variance_as_a_constant():
    student = randn(B, T, H, seed=1)
    teacher = randn(B, T, H, seed=2).requires_grad_()
    feature_loss(student, teacher, norm="std").backward()
    # With the variance detached, d/dteacher is just the MSE gradient / variance.
    expected = 2 * (teacher.detach() - student) / H / (B * T) / (teacher.detach().var(unbiased=False) + 1e-6)
    assert torch.allclose(teacher.grad, expected, atol=1e-7)


@pytest.mark.parametrize("norm", NORMS)
def test_feature_gradients_are_finite(norm):
    student = randn(B, T, H, seed=1).requires_grad_()
    feature_loss(student, randn(B, T, H, seed=2) * 1000, norm=norm, mask=token_mask()).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_feature_width_mismatch_names_both_widths():
    with pytest.raises(ValueError, match="student width 6.*teacher width 8"):
        feature_loss(randn(B, T, 6), randn(B, T, 8))


def test_feature_unknown_norm_computes_nothing():
    with pytest.raises(KeyError, match="'l2'"):
        feature_loss(randn(B, T, H), randn(B, T, H), norm="l2")


@pytest.mark.parametrize(
    "loss, shapes, words",
    [
        (kd_loss, [(B, T), (B, T, V)], r"logits must be \(B, T, V\)"),
        (kd_loss, [(B, T, V), (B, T + 1, V)], "student logits shape .* and teacher logits shape"),
        (feature_loss, [(B, T, H), (B, H)], r"hidden states must be \(B, T, H\)"),
        (
            feature_loss,
            [(B + 1, T, H), (B, T, H)],
            "student hidden states shape .* teacher hidden states shape",
        ),
    ],
)
def test_shape_mismatches_name_both_shapes(loss, shapes, words):
    with pytest.raises(ValueError, match=words):
        loss(randn(*shapes[0]), randn(*shapes[1]), 2.0 if loss is kd_loss else "none")


# ---------------------------------------------------------------- attention


def test_attention_matches_hand_reference_with_different_head_counts():
    # Rows summing to 1 in float64 (the loss renormalises rows; float32 ones sum to 1 within 1e-7).
    student, teacher = (
        m.double() / m.double().sum(-1, keepdim=True)
        for m in (causal_attention(2, seed=1), causal_attention(3, seed=2))
    )
    mask = token_mask()
    got = attention_loss(student, teacher, mask)
    assert got.item() == pytest.approx(
        ref_attention(student.tolist(), teacher.tolist(), mask.tolist()), rel=1e-10
    )
    assert got.item() > 0


def test_attention_identical_maps_give_zero():
    maps = causal_attention(2, seed=1)
    assert attention_loss(maps, maps.clone(), None).item() == 0.0
    # Same head average from different heads is also a perfect match.
    assert attention_loss(maps, maps.mean(1, keepdim=True), None).abs().item() < 1e-6


def test_attention_all_masked_is_exactly_zero_with_finite_grad():
    scores = randn(B, 2, T, T, seed=1).requires_grad_()
    loss = attention_loss(
        scores.softmax(-1), causal_attention(2, seed=2), torch.zeros(B, T, dtype=torch.bool)
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_attention_masked_query_rows_do_not_change_value():
    mask = token_mask()
    student, teacher = causal_attention(2, seed=1), causal_attention(2, seed=2)
    clean = attention_loss(student, teacher, mask)
    row_mask = ~mask[:, None, :, None]  # (B, 1, T_query, 1)
    dirty = attention_loss(student.masked_fill(row_mask, 0.0), teacher.masked_fill(row_mask, math.nan), mask)
    assert torch.equal(clean, dirty)


def test_attention_zero_probabilities_give_finite_value_and_grad():
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = randn(B, 2, T, T, seed=1).requires_grad_()
    student = scores.masked_fill(future, -math.inf).softmax(-1)
    teacher = causal_attention(2, seed=2)
    loss = attention_loss(student, teacher, None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    # A student that puts exactly 0 where the teacher does not: large, but finite.
    one_hot = torch.zeros(B, 2, T, T)
    one_hot[..., 0] = 1.0
    uniform_causal = (~future).float() / (~future).sum(-1, keepdim=True)
    worst = attention_loss(one_hot, uniform_causal.expand(B, 2, T, T), None)
    assert torch.isfinite(worst) and worst.item() > 1.0


def test_attention_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="attention maps differ"):
        attention_loss(causal_attention(2, seed=1), causal_attention(2, seed=2)[:, :, :4, :4], None)


def test_attention_of_bf16_maps_is_never_negative():
    # bf16 rows sum to 1 only within ~2e-3: without renormalising, near-identical maps gave KL < 0.
    g = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), -1)
    s = torch.softmax(t.log() + 1e-3 * torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), -1)
    value = attention_loss(s.to(torch.bfloat16), t)
    assert value >= 0
    torch.testing.assert_close(
        attention_loss(t, t.to(torch.bfloat16)), torch.zeros((), dtype=torch.float64), atol=1e-6, rtol=0
    )
