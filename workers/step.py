"""One optimizer step and one eval pass of the distillation loop, usable inside or outside Ray.

Token normalisation: every part of a micro-batch's loss is a mean over its own tokens (ce over its
shifted trained targets, the others over the batch's token mask, `workers.data.to_batch`); for backward each part is weighted by the
micro-batch's share of that part's tokens in the whole accumulation window across ranks, so masks of
different sizes do not change the gradient. Logged values stay per-token means.

Non-finite handling (a NaN must never reach the optimizer): a micro-batch whose loss has a non-finite component on any rank
has its loss replaced on every rank by a zero surrogate (exactly-zero gradients), and the window's
step leaves weights, optimizer state and LR schedule exactly as they were (`_step_without_moving`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workers.curriculum import COMPONENTS
from workers.data import Batch, token_mask, trained_tokens
from workers.dist import all_reduce_sum, any_rank, world_size
from workers.student_module import LossMode, StudentLoss, model_outputs


@dataclass
class StepResult:
    metrics: dict[str, float]  # token-weighted means over micro-batches and ranks
    tokens: int  # tokens in the window, all ranks
    trained: int = 0  # of those, label tokens (trained targets), all ranks
    skipped: bool = False
    nonfinite: list[str] = field(default_factory=list)


def _teacher_outputs(teacher: torch.nn.Module | None, batch: Batch, module, progress: float):
    """`module`: the engine's StudentWithLoss (its loss decides whether and what the teacher must return)."""
    if teacher is None or not module.loss.needs_teacher(progress):
        return None
    with torch.no_grad():
        return model_outputs(
            teacher,
            batch["input_ids"],
            batch["attention_mask"],
            module.loss.required_outputs(progress),
            module.base_attention,
        )


def _student_loss(engine, batch: Batch, teacher_out, progress: float, mode: LossMode) -> StudentLoss:
    return engine(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        teacher_out=teacher_out,
        progress=progress,
        mode=mode,
        token_mask=batch.get("token_mask"),
    )


def _metric_component(key: str) -> str | None:
    """The component whose tokens a metric is a mean over: `loss/kd/raw` -> kd, `eval/ce` (plain CE)
    -> ce; None for weights (the same in every micro-batch) and totals (rebuilt from the parts)."""
    parts = key.split("/")
    if len(parts) == 3 and parts[1] in COMPONENTS and parts[2] in ("raw", "scaled"):
        return parts[1]
    return "ce" if key == "eval/ce" else None


def reduce_token_weighted(
    per_batch: list[tuple[dict[str, float], dict[str, int]]], prefix: str
) -> dict[str, float]:
    """Means of `LossBreakdown.to_metrics(prefix)` dicts over micro-batches and ranks, each part weighted
    by its own token counts (`DistillationLoss.token_counts`); `{prefix}/total` is the sum of the
    reduced scaled parts, so the logged total stays the sum of the logged parts."""
    if not per_batch:
        return {}
    first = per_batch[0][0]
    keys = sorted(k for k in first if _metric_component(k) is not None)
    local = [sum(m[k] * n[_metric_component(k)] for m, n in per_batch) for k in keys]
    local += [float(sum(n[c] for _, n in per_batch)) for c in COMPONENTS]
    reduced = all_reduce_sum(local)
    counts = dict(zip(COMPONENTS, reduced[len(keys) :]))
    metrics = {k: first[k] for k in first if k.endswith("/weight")}
    for key, value in zip(keys, reduced):
        count = counts[_metric_component(key)]
        metrics[key] = value / count if count > 0 else 0.0
    metrics[f"{prefix}/total"] = sum(metrics[f"{prefix}/{c}/scaled"] for c in COMPONENTS)
    return metrics


def _token_weighted_objective(breakdown, counts: dict[str, int], window: dict[str, float]):
    """What backward differentiates for one micro-batch: each scaled part times this micro-batch's
    share of that part's tokens in the window (all ranks; DeepSpeed averages gradients over ranks), so
    the window's gradient is that of each part's mean over all its tokens, whatever the masks."""
    objective = breakdown.total * 0.0  # stays on the graph when no part has tokens
    for name, scaled in breakdown.scaled.items():
        if window[name] > 0:
            objective = objective + scaled * (counts[name] * world_size() / window[name])
    return objective


def _step_without_moving(engine) -> None:
    """Run DeepSpeed's step with the wrapped torch optimizer's own `step` a no-op for the call: DeepSpeed
    still counts the micro-step and clears (or, under ZeRO, reduces and releases) the window's gradients
    on every rank, but weights, AdamW's moments and step count do not change. The LR scheduler's state
    and lrs are put back: a skipped step does not advance the schedule, as on DeepSpeed's fp16 overflow."""
    basic = engine.basic_optimizer
    scheduler = engine.lr_scheduler
    scheduler_state = scheduler.state_dict() if scheduler is not None else None
    lrs = [group["lr"] for group in engine.optimizer.param_groups]
    # ZeRO-1/2 and the bf16 optimizer link AdamW's state to each parameter once, after the first real
    # step; a skipped first step must not mark that done while the state is still empty.
    linked = getattr(engine.optimizer, "_hp_optimizer_states_linked", None)
    basic.step = lambda *args, **kwargs: None  # an instance attribute shadows the class's step
    try:
        engine.step()
    finally:
        del basic.step
    if linked is False:
        engine.optimizer._hp_optimizer_states_linked = False
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    for group, lr in zip(engine.optimizer.param_groups, lrs):
        group["lr"] = lr


def train_step(
    engine, teacher: torch.nn.Module, micro_batches: Sequence[Batch], progress: float
) -> StepResult:
    loss = engine.module.loss
    counts = [loss.token_counts(b["labels"], token_mask(b)) for b in micro_batches]
    local_tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    local_trained = sum(trained_tokens(b) for b in micro_batches)
    *window_counts, window_tokens, window_trained = all_reduce_sum(
        [float(sum(n[c] for n in counts)) for c in COMPONENTS] + [float(local_tokens), float(local_trained)]
    )
    window = dict(zip(COMPONENTS, window_counts))
    per_batch, bad_components = [], []
    for batch, batch_counts in zip(micro_batches, counts):
        teacher_out = _teacher_outputs(teacher, batch, engine.module, progress)
        breakdown = _student_loss(engine, batch, teacher_out, progress, LossMode.TRAIN).breakdown
        nonfinite = breakdown.nonfinite()
        if any_rank(bool(nonfinite)):
            bad_components.extend(nonfinite or ["(another rank)"])
            del breakdown
            surrogate = _student_loss(engine, batch, None, progress, LossMode.ZERO_SURROGATE).breakdown.total
            engine.backward(surrogate, scale_wrt_gas=False)
        else:
            # engine.backward would divide by grad_accum; the token shares already do the averaging.
            engine.backward(_token_weighted_objective(breakdown, batch_counts, window), scale_wrt_gas=False)
            per_batch.append((breakdown.to_metrics("loss"), batch_counts))
        # DeepSpeed counts micro-steps in step(); it only updates at the accumulation boundary.
        if engine.is_gradient_accumulation_boundary() and bad_components:
            _step_without_moving(engine)
        else:
            engine.step()
    metrics = reduce_token_weighted(per_batch, "loss") if not bad_components else {}
    return StepResult(
        metrics,
        int(window_tokens),
        int(window_trained),
        skipped=bool(bad_components),
        nonfinite=sorted(set(bad_components)),
    )


@torch.no_grad()
def eval_pass(
    engine, teacher: torch.nn.Module, batches: Sequence[Batch], progress: float
) -> dict[str, float]:
    """The training loss at the current curriculum weights (same code path), plus plain CE and ppl."""
    engine.eval()
    per_batch = []
    try:
        for batch in batches:
            teacher_out = _teacher_outputs(teacher, batch, engine.module, progress)
            breakdown, plain_ce = _student_loss(engine, batch, teacher_out, progress, LossMode.EVAL)
            metrics = breakdown.to_metrics("eval")
            metrics["eval/ce"] = float(plain_ce)
            per_batch.append((metrics, engine.module.loss.token_counts(batch["labels"], token_mask(batch))))
    finally:
        engine.train()
    metrics = reduce_token_weighted(per_batch, "eval")
    metrics["eval/ppl"] = math.exp(min(metrics["eval/ce"], 50.0))
    return metrics
