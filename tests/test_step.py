"""`workers.step.train_step` through a real single-process DeepSpeed engine (gloo, CPU, fp32): gradient
accumulation weights tokens, not micro-batches; a skipped non-finite step changes nothing."""

from __future__ import annotations

import copy

import deepspeed
import pytest
import torch
import torch.nn.functional as F
from engine_configs import engine_config
from tiny_llama import CE_ONLY, tiny_llama

from workers.curriculum import COMPONENTS
from workers.data import to_batch
from workers.distill_loss import DistillationLoss
from workers.engine import build_engine
from workers.loss_config import CurriculumConfig, LossConfig
from workers.step import eval_pass, train_step

WIDTH, LAYERS, VOCAB, SEQ = 32, 2, 128, 16
TEMPERATURE = 2.0
KD_ONLY = {**CE_ONLY, "alpha_ce": 0.0, "alpha_kd": 1.0, "kd_temperature": TEMPERATURE}
NO_CURRICULUM = {"enabled": False, "phase1_end": 0.0, "phase2_end": 0.0}


def kd_engine(
    zero_stage: int,
    grad_accum: int = 2,
    grad_clip: float = 1.0,
    loss_cfg: dict = KD_ONLY,
    micro_batch_size: int = 1,
):
    """A student engine (KD only by default: a mean over attention-mask tokens), its frozen teacher and
    a plain copy of the student's initial weights."""
    from workers.student_module import StudentWithLoss

    student = tiny_llama(LAYERS, WIDTH, VOCAB, seed=0)
    teacher = tiny_llama(LAYERS, WIDTH, VOCAB, seed=1).eval()
    loss = DistillationLoss(
        LossConfig(**loss_cfg),
        CurriculumConfig(**NO_CURRICULUM),
        student_hidden_size=WIDTH,
        teacher_hidden_size=WIDTH,
        student_num_layers=LAYERS,
        teacher_num_layers=LAYERS,
    )
    reference = copy.deepcopy(student)  # plain torch copy, before DeepSpeed touches the module
    engine = build_engine(
        StudentWithLoss(student, loss, "eager"),
        engine_config(zero_stage, grad_accum, grad_clip, micro_batch_size),
        1,
    )
    return engine, teacher, reference


def micro_batch(real_tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """One row of SEQ positions, the first `real_tokens` real, the rest padding (mask 0, label -100)."""
    ids = torch.randint(3, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed))  # (1, T)
    mask = (torch.arange(SEQ) < real_tokens).long().unsqueeze(0)  # (1, T)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, 2))
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def per_token_kd(student: torch.nn.Module, teacher: torch.nn.Module, batch, mask: str = "attention_mask"):
    """T^2 * KL(softmax(t/T) || softmax(s/T)) at each position of `batch[mask]` (real tokens by
    default): (N,), plain torch."""
    keep = batch[mask].bool()  # (B, T)
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[keep]  # (N, V)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[keep]
    log_s = F.log_softmax(s / TEMPERATURE, dim=-1)
    log_t = F.log_softmax(t / TEMPERATURE, dim=-1)
    return TEMPERATURE**2 * (log_t.exp() * (log_t - log_s)).sum(-1)


def per_token_ce(student: torch.nn.Module, teacher: torch.nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy at each target that is not -100: (N,), plain torch."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]  # (1, T-1): position t predicts token t + 1
    keep = targets != -100
    return F.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="none")


def hand_gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return {
        name: (torch.zeros_like(p) if g is None else g).float()
        for (name, p), g in zip(model.named_parameters(), grads)
    }


def capture_window_gradients(engine) -> dict[str, torch.Tensor]:
    """Filled with the student's full gradients (DeepSpeed's own accessor, ZeRO-aware) when `engine.step`
    is called at the accumulation boundary, after the window's last backward; the step then runs as is."""
    captured: dict[str, torch.Tensor] = {}
    step = engine.step

    def grab_then_step(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            for name, param in engine.module.student.named_parameters():
                grad = deepspeed.utils.safe_get_full_grad(param)
                captured[name] = torch.zeros_like(param) if grad is None else grad.detach().clone()
        return step(*args, **kwargs)

    engine.step = grab_then_step
    return captured


@pytest.mark.parametrize("zero_stage", [0, 2], ids=lambda stage: f"zero{stage}")
@pytest.mark.parametrize(
    "component, per_token, tokens",
    [
        ("kd", per_token_kd, (3, 12)),
        ("ce", per_token_ce, (2, 11)),  # ce: the shifted targets, one fewer per row
    ],
    ids=["kd", "ce"],
)
def test_accumulation_with_unequal_masks_weights_tokens_not_micro_batches(
    single_process_group, zero_stage, component, per_token, tokens
):
    """Micro-batch A has 3 real tokens, B has 12: the window's gradient is that of the mean over all the
    window's tokens (each counts once), not the mean of the two micro-batch means (A's tokens ~4x heavier)."""
    loss_cfg = KD_ONLY if component == "kd" else CE_ONLY
    engine, teacher, reference = kd_engine(zero_stage, grad_clip=0.0, loss_cfg=loss_cfg)  # no clipping
    a, b = micro_batch(3, seed=0), micro_batch(12, seed=1)
    captured = capture_window_gradients(engine)
    result = train_step(engine, teacher, [a, b], progress=0.5)
    assert not result.skipped and result.tokens == 15
    assert captured, "the optimizer never stepped at the accumulation boundary"

    loss_a, loss_b = per_token(reference, teacher, a), per_token(reference, teacher, b)
    assert (loss_a.numel(), loss_b.numel()) == tokens
    total = sum(tokens)
    token_mean = hand_gradients(reference, (loss_a.sum() + loss_b.sum()) / total)
    batch_mean = hand_gradients(reference, (loss_a.mean() + loss_b.mean()) / 2)
    # The logged loss is the per-token mean of the window too.
    window_mean = float((loss_a.sum() + loss_b.sum()).detach() / total)
    assert result.metrics[f"loss/{component}/raw"] == pytest.approx(window_mean, rel=1e-4)

    assert captured.keys() == token_mean.keys()
    worst_right = max(float((captured[n] - token_mean[n]).abs().max()) for n in captured)
    worst_wrong = max(float((captured[n] - batch_mean[n]).abs().max()) for n in captured)
    scale = max(float(g.abs().max()) for g in token_mean.values())
    assert worst_right <= 1e-5 * scale, (worst_right, scale)
    # Averaging micro-batch means would be caught: its gradient is far outside that tolerance.
    assert worst_wrong > 1e-2 * scale, (worst_wrong, scale)


def test_each_part_is_weighted_by_its_own_tokens_when_both_are_on(single_process_group):
    """ce (2 + 11 shifted targets) and kd (3 + 12 tokens) together: the window's gradient is that of
    0.5 * (ce mean over its 13 targets) + 0.5 * (kd mean over its 15 tokens), and the logged total is
    the sum of the logged parts."""
    both = {**KD_ONLY, "alpha_ce": 0.5, "alpha_kd": 0.5}
    engine, teacher, reference = kd_engine(0, grad_clip=0.0, loss_cfg=both)
    a, b = micro_batch(3, seed=0), micro_batch(12, seed=1)
    captured = capture_window_gradients(engine)
    result = train_step(engine, teacher, [a, b], progress=0.5)

    ce = torch.cat([per_token_ce(reference, teacher, a), per_token_ce(reference, teacher, b)])  # (13,)
    kd = torch.cat([per_token_kd(reference, teacher, a), per_token_kd(reference, teacher, b)])  # (15,)
    expected = hand_gradients(reference, 0.5 * ce.mean() + 0.5 * kd.mean())
    scale = max(float(g.abs().max()) for g in expected.values())
    worst = max(float((captured[n] - expected[n]).abs().max()) for n in captured)
    assert worst <= 1e-5 * scale, (worst, scale)
    metrics = result.metrics
    assert metrics["loss/ce/raw"] == pytest.approx(float(ce.mean()), rel=1e-4)
    assert metrics["loss/kd/raw"] == pytest.approx(float(kd.mean()), rel=1e-4)
    assert metrics["loss/ce/weight"] == metrics["loss/kd/weight"] == 0.5
    parts = sum(metrics[f"loss/{c}/scaled"] for c in ("ce", "kd", "feature", "attention"))
    assert metrics["loss/total"] == pytest.approx(parts, rel=1e-12)


def snapshot(engine, moments: bool = False) -> dict:
    """Everything a step may change: the fp32 weights (under ZeRO the optimizer's masters, read through
    DeepSpeed's accessors, so ZeRO-3's partitions are whole), AdamW's state tensors (exp_avg, exp_avg_sq,
    step), the LR scheduler's state and the lr of every group. With `moments`, also AdamW's moments as
    DeepSpeed's per-parameter accessor sees them (ZeRO links them after the first real step; only the
    weight-decay group: DeepSpeed 0.19 links a second group before it has any state)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero = engine.zero_optimization_stage() > 0
    params = [p for p in engine.module.parameters() if p.requires_grad]
    if moments and zero:
        matrices = [p for p in params if p.ndim >= 2]
        moments = [safe_get_full_optimizer_state(p, k) for p in matrices for k in ("exp_avg", "exp_avg_sq")]
    else:
        moments = []
    return {
        "weights": [(safe_get_full_fp32_param(p) if zero else p).detach().clone() for p in params],
        "state": [
            {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for state in engine.basic_optimizer.state.values()
            if state
        ],
        "moments": [m.clone() for m in moments],
        "scheduler": dict(engine.lr_scheduler.state_dict()),
        "lrs": [g["lr"] for g in engine.optimizer.param_groups],
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["scheduler"] == before["scheduler"]
    assert after["lrs"] == before["lrs"]
    for key in ("weights", "moments"):
        assert len(after[key]) == len(before[key])
        for x, y in zip(before[key], after[key]):
            assert torch.equal(x, y), key
    assert len(after["state"]) == len(before["state"])
    for x, y in zip(before["state"], after["state"]):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k


class PoisonedTeacherCall:
    """A teacher forward hook (as workers/faults.py's `nan_teacher_steps`, but per micro-batch): NaN
    logits on the `n`-th teacher forward after `arm(n)`, so one micro-batch inside a window is bad."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.remaining: int | None = None
        teacher.register_forward_hook(self)

    def arm(self, n: int) -> None:
        self.remaining = n

    def __call__(self, module, args, output):
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining == 0:
                output.logits = torch.full_like(output.logits, float("nan"))
                self.remaining = None
        return output


@pytest.mark.parametrize("zero_stage", [0, 2, 3], ids=lambda stage: f"zero{stage}")
@pytest.mark.parametrize("healthy_before", [0, 2], ids=["first_step", "after_2_steps"])
def test_a_skipped_non_finite_step_leaves_weights_optimizer_state_and_lr_schedule_unchanged(
    single_process_group, zero_stage, healthy_before
):
    """A window whose second micro-batch has NaN teacher logits is skipped (the first one's gradients
    too); afterwards weights, AdamW's moments and step count, and the LR schedule are bit-for-bit as
    before (also when it is the run's first step), and the next healthy steps land exactly where a run
    that never saw the bad window lands."""
    window = [micro_batch(16, seed=2), micro_batch(9, seed=3)]
    engine, teacher, _ = kd_engine(zero_stage)
    twin, twin_teacher, _ = kd_engine(zero_stage)
    poison = PoisonedTeacherCall(teacher)
    for _ in range(healthy_before):
        assert not train_step(engine, teacher, window, 0.5).skipped
        assert not train_step(twin, twin_teacher, window, 0.5).skipped
    before = snapshot(engine)
    if healthy_before:
        assert all(int(s["step"]) == healthy_before for s in before["state"]) and before["state"]
    micro_steps = engine.micro_steps

    poison.arm(2)  # the first micro-batch is healthy and backpropagates before the second goes bad
    result = train_step(engine, teacher, window, 0.5)
    assert poison.remaining is None
    assert result.skipped and result.nonfinite == ["kd"] and result.metrics == {}
    assert_same(before, snapshot(engine))
    assert engine.micro_steps == micro_steps + 2  # DeepSpeed's window counter still moved on

    for _ in range(3):  # the skipped step left nothing behind: from here both runs are the same run
        assert not train_step(engine, teacher, window, 0.5).skipped
        assert not train_step(twin, twin_teacher, window, 0.5).skipped
    after = snapshot(engine, moments=True)
    assert_same(snapshot(twin, moments=True), after)
    assert after["state"]
    moved = max(float((x - y).abs().max()) for x, y in zip(before["weights"], after["weights"]))
    assert moved > 1e-4  # the healthy steps did train: the comparison is not between untouched models


# ---------------------------------------------------------------- loss-masked batches (shard format v3)

EVERY_PART = {**KD_ONLY, "alpha_ce": 0.3, "alpha_kd": 0.7, "alpha_feature": 1.0, "alpha_attention": 1.0}


def masked_batch(seed: int, attended: int, trained: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One row through `to_batch` as a v3 shard gives it: `attended` real tokens then padding (id 2),
    tokens trained[0]..trained[1]-1 trained (a completion after its prompt), the rest not."""
    ids = torch.randint(3, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed))  # (1, T)
    positions = torch.arange(SEQ).unsqueeze(0)  # (1, T)
    attention = (positions < attended).to(torch.int8)
    loss_mask = ((positions >= trained[0]) & (positions < trained[1])).to(torch.int8)
    ids = torch.where(attention.bool(), ids, torch.full_like(ids, 2))
    return to_batch(ids.numpy(), loss_mask=loss_mask.numpy(), attention_mask=attention.numpy())


def stacked(*batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def assert_close_gradients(got: dict, want: dict) -> None:
    assert got and got.keys() == want.keys()
    scale = max(float(g.abs().max()) for g in want.values())
    worst = max(float((got[n] - want[n]).abs().max()) for n in got)
    assert worst <= 1e-5 * scale, (worst, scale)


@pytest.mark.parametrize("zero_stage", [0, 2], ids=lambda stage: f"zero{stage}")
def test_loss_masked_accumulation_equals_one_big_batch(single_process_group, zero_stage):
    """Every part on; micro-batch A is a padded prompt + 3-token completion (3 ce targets, 3 positions
    for the other parts), B an unpadded row with 12 trained tokens: two accumulated micro-batches give
    the gradient and the logged parts of one batch holding both rows."""
    a, b = masked_batch(0, attended=7, trained=(4, 7)), masked_batch(1, attended=SEQ, trained=(3, 15))
    assert [int(x["token_mask"].sum()) for x in (a, b)] == [3, 12]
    accumulated, teacher, _ = kd_engine(zero_stage, grad_accum=2, grad_clip=0.0, loss_cfg=EVERY_PART)
    big, big_teacher, _ = kd_engine(
        zero_stage, grad_accum=1, grad_clip=0.0, loss_cfg=EVERY_PART, micro_batch_size=2
    )
    captured, expected = capture_window_gradients(accumulated), capture_window_gradients(big)

    result = train_step(accumulated, teacher, [a, b], progress=0.5)
    reference = train_step(big, big_teacher, [stacked(a, b)], progress=0.5)

    assert not result.skipped and (result.tokens, result.trained) == (7 + SEQ, 3 + 12) == (
        reference.tokens,
        reference.trained,
    )
    assert_close_gradients(captured, expected)
    for c in COMPONENTS:
        assert result.metrics[f"loss/{c}/raw"] == pytest.approx(reference.metrics[f"loss/{c}/raw"], rel=1e-5)
        assert result.metrics[f"loss/{c}/raw"] > 0


def test_a_micro_batch_with_no_trained_target_adds_nothing_and_the_step_is_finite(single_process_group):
    """A conversation truncated before its answer: no trained target. Its micro-batch weighs 0 in the
    window (gradient and logged parts those of the other micro-batch alone); a window of only such
    micro-batches is a finite, applied step with zero parts and zero gradients."""
    empty = masked_batch(0, attended=7, trained=(0, 0))
    b = masked_batch(1, attended=SEQ, trained=(3, 15))
    assert int(empty["token_mask"].sum()) == 0 and int((empty["labels"] != -100).sum()) == 0
    engine, teacher, _ = kd_engine(0, grad_accum=2, grad_clip=0.0, loss_cfg=EVERY_PART)
    alone, alone_teacher, _ = kd_engine(0, grad_accum=1, grad_clip=0.0, loss_cfg=EVERY_PART)
    captured, expected = capture_window_gradients(engine), capture_window_gradients(alone)

    result = train_step(engine, teacher, [empty, b], progress=0.5)
    reference = train_step(alone, alone_teacher, [b], progress=0.5)
    assert not result.skipped and result.trained == 12
    assert_close_gradients(captured, expected)
    for key, value in reference.metrics.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-5), key

    captured.clear()
    nothing = train_step(engine, teacher, [empty, empty], progress=0.5)
    assert not nothing.skipped and nothing.nonfinite == [] and nothing.trained == 0
    assert all(v == 0.0 for k, v in nothing.metrics.items() if not k.endswith("/weight"))
    assert captured and all(bool((g == 0).all()) for g in captured.values())


def test_eval_counts_the_same_masked_tokens_as_training(single_process_group):
    """Eval's parts and its plain CE run over the loss mask's tokens: at the same weights they equal the
    train step's parts on the same batches, and eval/ce is the CE of the trained targets alone."""
    a, b = masked_batch(0, attended=7, trained=(4, 7)), masked_batch(1, attended=SEQ, trained=(3, 15))
    engine, teacher, reference = kd_engine(0, grad_accum=2, grad_clip=0.0, loss_cfg=EVERY_PART)
    evaluated = eval_pass(engine, teacher, [a, b], progress=0.5)
    trained = train_step(engine, teacher, [a, b], progress=0.5).metrics  # parts from the same weights

    for c in COMPONENTS:
        assert evaluated[f"eval/{c}/raw"] == pytest.approx(trained[f"loss/{c}/raw"], rel=1e-5), c
    with torch.no_grad():
        ce = torch.cat([per_token_ce(reference, teacher, a), per_token_ce(reference, teacher, b)])  # (15,)
        kd = torch.cat([per_token_kd(reference, teacher, x, mask="token_mask") for x in (a, b)])  # (15,)
    assert ce.numel() == kd.numel() == 15
    assert evaluated["eval/ce"] == pytest.approx(float(ce.mean()), rel=1e-5)
    assert evaluated["eval/kd/raw"] == pytest.approx(float(kd.mean()), rel=1e-5)
