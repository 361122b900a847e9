"""One optimizer step and one eval pass of the distillation loop, usable inside or outside Ray.

Token normalisation: every micro-batch loss is a per-token mean; for
backward it is weighted by its share of the tokens in the whole accumulation window across ranks, so
masks of different sizes do not change the gradient. Logged values stay per-token means.

Non-finite handling (a NaN must never reach the optimizer): a micro-batch whose loss has a non-finite component on any rank
has its loss replaced on every rank by a zero surrogate (exactly-zero gradients), and the window's
step leaves weights, optimizer state and LR schedule exactly as they were (`_step_without_moving`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workers.data import Batch
from workers.dist import all_reduce_sum, any_rank, world_size
from workers.student_module import LossMode, StudentLoss, model_outputs


@dataclass
class StepResult:
    metrics: dict[str, float]  # token-weighted means over micro-batches and ranks
    tokens: int  # tokens in the window, all ranks
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
    )


def _weighted_mean(sums: dict[str, float], tokens: float) -> dict[str, float]:
    return {k: v / tokens for k, v in sums.items()} if tokens > 0 else dict.fromkeys(sums, 0.0)


def reduce_token_weighted(per_batch: list[tuple[dict[str, float], int]]) -> tuple[dict[str, float], float]:
    """Token-weighted means of metric dicts over batches and ranks."""
    if not per_batch:
        return {}, 0.0
    keys = sorted(per_batch[0][0])
    local = [sum(m[k] * n for m, n in per_batch) for k in keys] + [float(sum(n for _, n in per_batch))]
    reduced = all_reduce_sum(local)
    tokens = reduced[-1]
    return _weighted_mean(dict(zip(keys, reduced[:-1])), tokens), tokens


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
    local_tokens = [int(b["attention_mask"].sum()) for b in micro_batches]
    window_tokens = all_reduce_sum([float(sum(local_tokens))])[0]
    per_batch, bad_components = [], []
    for batch, n_tokens in zip(micro_batches, local_tokens):
        teacher_out = _teacher_outputs(teacher, batch, engine.module, progress)
        breakdown = _student_loss(engine, batch, teacher_out, progress, LossMode.TRAIN).breakdown
        nonfinite = breakdown.nonfinite()
        if any_rank(bool(nonfinite)):
            bad_components.extend(nonfinite or ["(another rank)"])
            del breakdown
            surrogate = _student_loss(engine, batch, None, progress, LossMode.ZERO_SURROGATE).breakdown.total
            engine.backward(surrogate, scale_wrt_gas=False)
        else:
            # engine.backward would divide by grad_accum; the token share already does the averaging.
            share = n_tokens * world_size() / window_tokens
            engine.backward(breakdown.total * share, scale_wrt_gas=False)
            per_batch.append((breakdown.to_metrics("loss"), n_tokens))
        # DeepSpeed counts micro-steps in step(); it only updates at the accumulation boundary.
        if engine.is_gradient_accumulation_boundary() and bad_components:
            _step_without_moving(engine)
        else:
            engine.step()
    metrics, _ = reduce_token_weighted(per_batch) if not bad_components else ({}, 0.0)
    return StepResult(
        metrics, int(window_tokens), skipped=bool(bad_components), nonfinite=sorted(set(bad_components))
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
            per_batch.append((metrics, int(batch["attention_mask"].sum())))
    finally:
        engine.train()
    metrics, _ = reduce_token_weighted(per_batch)
    metrics["eval/ppl"] = math.exp(min(metrics["eval/ce"], 50.0))
    return metrics
