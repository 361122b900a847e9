"""The module handed to `deepspeed.initialize`: the student plus the distillation loss's projectors.

Under ZeRO-3 parameters are only materialised inside the engine's forward, so the whole loss (the
projectors included) is computed in this module's `forward`, with the teacher's outputs passed in.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch

from workers.attention import (
    ATTN_IMPLEMENTATIONS,
    EAGER,
    AttentionChoiceError,
    kernel_for,
    unsupported_message,
)
from workers.distill_loss import DistillationLoss, LossBreakdown, OutputRequest


def base_attention(setting: str) -> str:
    """The `train.attn_implementation` setting both models resolve, each for its own class, when no
    attention maps are needed (`workers.attention.kernel_for`): "auto" -> flash-attention 2 or sdpa
    where the model supports them, else eager; an explicit kernel must be supported. Eager is as fast
    in fp32 at short sequences on CPU and faster in bf16, where sdpa's backward is slow: BENCHMARKS.md."""
    if setting not in ATTN_IMPLEMENTATIONS:
        raise AttentionChoiceError(
            f"train.attn_implementation={setting!r}: must be one of {list(ATTN_IMPLEMENTATIONS)}"
        )
    return setting


def ensure_attention_implementation(model: torch.nn.Module, needs_attention_maps: bool, base: str) -> None:
    """`sdpa` and flash-attention return no attention maps: `eager` while the attention loss is on,
    else `base` resolved for this model's class (`workers.attention.kernel_for`)."""
    wanted = EAGER if needs_attention_maps else kernel_for(model, base)
    if getattr(model.config, "_attn_implementation", None) != wanted:
        model.set_attn_implementation(wanted)


def compile_for_training(model: torch.nn.Module) -> None:
    """torch.compile the model's forward (and so its backward) in place (`nn.Module.compile`): its
    parameter names, state dict, DeepSpeed checkpoints and export stay those of the plain model.
    The loss stays eager: it branches on the training progress, which would recompile every step.
    Switching attention kernels or output requests (the curriculum's phases) recompiles once each.
    It trades a slow first step for faster later ones: BENCHMARKS.md, "Compiling the teacher's pre-training"."""
    import torch._dynamo

    # A machine that cannot compile (no C++ compiler, an unsupported op) trains eager instead of failing.
    torch._dynamo.config.suppress_errors = True
    model.compile()


def model_outputs(
    model: torch.nn.Module, input_ids, attention_mask, request: OutputRequest, base: str = "auto"
):
    ensure_attention_implementation(model, request.attentions, base)
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=request.hidden_states,
        output_attentions=request.attentions,
        use_cache=False,
    )


class LossMode(enum.Enum):
    TRAIN = "train"  # the curriculum loss
    EVAL = "eval"  # the curriculum loss, plus plain token CE from the same logits
    # A scalar 0 whose backward gives exactly-zero gradients: it stands in for a micro-batch whose
    # loss was non-finite (DeepSpeed's ZeRO optimizers need a backward before every step).
    ZERO_SURROGATE = "zero_surrogate"


class StudentLoss(NamedTuple):
    """What `StudentWithLoss.forward` returns in every mode (a NamedTuple, which ZeRO-3's output
    hooks walk like the tuple it is).

    breakdown: the loss ledger; in ZERO_SURROGATE mode only its `total` (the surrogate) is set.
    plain_ce: scalar token CE in EVAL mode (eval reports it even when alpha_ce is 0 and the breakdown
        skipped CE); None in the other modes.
    """

    breakdown: LossBreakdown
    plain_ce: torch.Tensor | None = None


class StudentWithLoss(torch.nn.Module):
    def __init__(self, student: torch.nn.Module, loss: DistillationLoss, attn_implementation: str = "auto"):
        super().__init__()
        self.student = student
        self.loss = loss
        # Both models' kernel while no attention maps are needed (the teacher's too: workers.step).
        self.base_attention = base_attention(attn_implementation)
        problem = unsupported_message(self.base_attention, type(student))
        if problem is not None:  # the driver refuses this first (orchestrator/train/preflight.py)
            raise AttentionChoiceError(problem)

    def forward(
        self,
        *,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T)
        labels: torch.Tensor,  # (B, T), -100 where ignored
        teacher_out,
        progress: float,
        mode: LossMode = LossMode.TRAIN,
        token_mask: torch.Tensor
        | None = None,  # (B, T) positions kd/feature/attention count; None = attention_mask
    ) -> StudentLoss:
        """The loss at `progress` in `mode` (see `LossMode`). Every mode runs here, inside the
        engine's forward, where ZeRO-3 has gathered the parameters. The model sees `attention_mask`;
        the loss counts `labels` (ce) and `token_mask` (the other parts)."""
        if mode is LossMode.ZERO_SURROGATE:
            # Logits-only forward; `nan_to_num`'s backward masks non-finite positions, so no
            # non-finite value reaches the gradients.
            logits = self.student(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return StudentLoss(LossBreakdown(total=logits.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0))
        request = self.loss.required_outputs(progress)
        student_out = model_outputs(self.student, input_ids, attention_mask, request, self.base_attention)
        # `.forward`, not `__call__`: the breakdown is a dataclass, which ZeRO-3's module hooks cannot
        # walk to register backward hooks; the projectors inside are still called as modules (hooked).
        breakdown = self.loss.forward(student_out, teacher_out, labels, attention_mask, progress, token_mask)
        if mode is LossMode.EVAL:
            plain_ce = (
                breakdown.raw["ce"] if "ce" in breakdown.raw else self.loss.ce(student_out.logits, labels)
            )
            return StudentLoss(breakdown, plain_ce)
        return StudentLoss(breakdown)
