"""The curriculum distillation loss: one nn.Module that turns model outputs into a LossBreakdown.

It owns the trained student->teacher projectors (so the caller puts it in the DeepSpeed engine
next to the student), asks the schedule for the weights at the current progress, computes only
the components whose weight is > 0 (so phase 1 asks neither model for hidden states or attention
maps), and builds `total` as the sum of the scaled parts it reports (so the logged total is the sum
of the logged parts). The same call serves training and eval, so eval never adds a part that
training has switched off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workers.curriculum import COMPONENTS, CurriculumSchedule
from workers.loss_config import CurriculumConfig, LossConfig
from workers.losses import attention_loss, ce_loss, ce_targets, feature_loss, kd_loss, shared_columns

# The components that read the teacher's outputs (ce alone needs no teacher forward).
_TEACHER_COMPONENTS = ("kd", "feature", "attention")


@dataclass(frozen=True)
class OutputRequest:
    """What the models must return for this step (pass as output_hidden_states / output_attentions)."""

    hidden_states: bool
    attentions: bool


@dataclass
class LossBreakdown:
    """One step's loss ledger.

    total: scalar, differentiable; built as the sum of `scaled`, so it equals the logged parts.
    raw: unweighted value of each computed component (components with weight 0 are absent).
    weights: the schedule's weight of every component in `COMPONENTS`.
    scaled: weight * raw of each computed component.
    Each raw value is a mean over its own tokens (`DistillationLoss.token_counts`).
    """

    total: Tensor
    raw: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    scaled: dict[str, Tensor] = field(default_factory=dict)

    def nonfinite(self) -> list[str]:
        """Names of computed components whose raw value is NaN or inf, in `COMPONENTS` order."""
        return [name for name in COMPONENTS if name in self.raw and not bool(torch.isfinite(self.raw[name]))]

    def to_metrics(self, prefix: str = "loss") -> dict[str, float]:
        """Flat python floats: `{prefix}/total` and raw/weight/scaled of every component (0.0 if not computed)."""
        metrics = {f"{prefix}/total": float(self.total.detach())}
        for name in COMPONENTS:
            raw = self.raw.get(name)
            scaled = self.scaled.get(name)
            metrics[f"{prefix}/{name}/raw"] = 0.0 if raw is None else float(raw.detach())
            metrics[f"{prefix}/{name}/weight"] = float(self.weights.get(name, 0.0))
            metrics[f"{prefix}/{name}/scaled"] = 0.0 if scaled is None else float(scaled.detach())
        return metrics


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """TinyBERT-style uniform map over Hugging Face `hidden_states` indices.

    Index 0 is the embedding output and index L is layer L's output. Student layer j (1..S) maps to
    teacher layer j * T // S, so the last student layer maps to the last teacher layer.
    Example: S=2, T=4 -> [(1, 2), (2, 4)]; S=3, T=4 -> [(1, 1), (2, 2), (3, 4)].
    """
    for name, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if student_layers > teacher_layers:
        raise ValueError(
            f"student_layers ({student_layers}) > teacher_layers ({teacher_layers}): a uniform map needs "
            "a student no deeper than its teacher; pass an explicit layer_map"
        )
    return [(j, j * teacher_layers // student_layers) for j in range(1, student_layers + 1)]


def _resolved_layer_map(
    layer_map: str | Sequence[Sequence[int]], student_layers: int, teacher_layers: int
) -> list[tuple[int, int]]:
    """`LossConfig.layer_map` (its form already checked there) as pairs within both models' depths."""
    if isinstance(layer_map, str):
        return uniform_layer_map(student_layers, teacher_layers)
    pairs = []
    for s, t in layer_map:
        if not (s <= student_layers and t <= teacher_layers):
            raise ValueError(
                f"layer_map pair {[s, t]!r} is out of range: hidden_states indices are 0..{student_layers} "
                f"for the student and 0..{teacher_layers} for the teacher (0 = embeddings)"
            )
        pairs.append((s, t))
    return pairs


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class DistillationLoss(nn.Module):
    """Curriculum-weighted sum of ce, kd, feature and attention losses.

    Args:
        loss: weights and knobs (`LossConfig`: kd_temperature, kd_kind, jsd_beta feed
            `workers.losses.kd_loss`, feature_norm `feature_loss`). layer_map is "auto"
            (`uniform_layer_map`) or [[student_index, teacher_index], ...] over hidden_states indices
            (0 = embeddings); attention uses the pairs with both indices >= 1, taking attentions[index - 1].
        curriculum: the phase boundaries (`CurriculumConfig`); with `loss`'s alphas, the schedule.
        student_hidden_size, teacher_hidden_size: widths H_s, H_t; each projector is Linear(H_s, H_t).
        student_num_layers, teacher_num_layers: decoder layer counts S, T (hidden_states has S+1 / T+1 entries).
        ignore_index: label value excluded from ce.
        vocab_size: the run tokenizer's length V. Teacher and student of one family share a tokenizer
            but may pad their embeddings past it to different widths (Qwen2.5-7B 152064 rows, 0.5B
            151936, the tokenizer 151665): every logit-reading part uses columns [:V] of both sides
            only, so padded columns take no part in any softmax, value or gradient. None = the
            logits as they are (both sides must then have the same width).
    """

    def __init__(
        self,
        loss: LossConfig,
        curriculum: CurriculumConfig,
        *,
        student_hidden_size: int,
        teacher_hidden_size: int,
        student_num_layers: int,
        teacher_num_layers: int,
        ignore_index: int = -100,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = None if vocab_size is None else _positive_int("vocab_size", vocab_size)
        student_hidden_size = _positive_int("student_hidden_size", student_hidden_size)
        teacher_hidden_size = _positive_int("teacher_hidden_size", teacher_hidden_size)
        student_num_layers = _positive_int("student_num_layers", student_num_layers)
        teacher_num_layers = _positive_int("teacher_num_layers", teacher_num_layers)

        self.layer_map: list[tuple[int, int]] = _resolved_layer_map(
            loss.layer_map, student_num_layers, teacher_num_layers
        )
        # attentions[i] is layer i+1's map; the embeddings (index 0) have none.
        self.attention_pairs: list[tuple[int, int]] = [(s, t) for s, t in self.layer_map if s >= 1 and t >= 1]
        if loss.alpha_attention > 0 and not self.attention_pairs:
            raise ValueError(
                f"layer_map {self.layer_map!r} has no pair with both indices >= 1, "
                "but alpha_attention > 0 needs one (index 0 is the embeddings, which have no attention map)"
            )
        self.schedule = CurriculumSchedule(curriculum, loss)
        self.student_num_layers = student_num_layers
        self.teacher_num_layers = teacher_num_layers
        self.kd_temperature = loss.kd_temperature
        self.kd_kind = loss.kd_kind
        self.jsd_beta = loss.jsd_beta
        self.feature_norm = loss.feature_norm
        self.ignore_index = ignore_index
        # One trained projection per mapped pair, student width -> teacher width (also when the widths
        # match: the student's basis need not line up with the teacher's).
        self.projectors = nn.ModuleList(
            nn.Linear(student_hidden_size, teacher_hidden_size) for _ in self.layer_map
        )

    def weights(self, progress: float) -> dict[str, float]:
        return self.schedule.weights(progress)

    def shared_logits(self, logits: Tensor, who: str = "student") -> Tensor:
        """(B, T, V_model) -> (B, T, vocab_size): the shared tokenizer's columns, a view. Logits
        already vocab_size wide (or vocab_size None) come back as they are: slicing them anyway would
        add a backward node that copies the full logits gradient."""
        return shared_columns(logits, self.vocab_size, who)

    def ce(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        """Token CE over the shared columns of the (B, T, V_s) logits: the ce part, and eval's plain CE."""
        return ce_loss(self.shared_logits(student_logits), labels, ignore_index=self.ignore_index)

    def needs_teacher(self, progress: float) -> bool:
        """Whether any component at `progress` reads the teacher's outputs (else skip its forward)."""
        weights = self.weights(progress)
        return any(weights[name] > 0 for name in _TEACHER_COMPONENTS)

    def required_outputs(self, progress: float) -> OutputRequest:
        """Which optional outputs the models must produce at `progress` (none in phase 1)."""
        weights = self.weights(progress)
        return OutputRequest(hidden_states=weights["feature"] > 0, attentions=weights["attention"] > 0)

    def forward(
        self,
        student_out: Any,
        teacher_out: Any | None,
        labels: Tensor,
        attention_mask: Tensor | None,
        progress: float,
        token_mask: Tensor | None = None,
    ) -> LossBreakdown:
        """Compute the weighted loss at `progress`.

        Args:
            student_out, teacher_out: Hugging Face CausalLMOutput-like: `.logits` (B, T, V),
                `.hidden_states` (tuple of L+1 (B, T, H)), `.attentions` (tuple of L (B, heads, T, T)).
                Only the fields a nonzero component needs are read; teacher_out may be None when
                ce is the only nonzero component.
            labels: (B, T) input ids, ignore_index at padding and untrained tokens (the caller's job).
            attention_mask: (B, T), 1 = real token; the token mask when `token_mask` is None.
            progress: step / total_steps in [0, 1].
            token_mask: (B, T), 1 = kd, feature and attention count this position (with a loss mask:
                those whose next-token target is trained, `workers.data.to_batch`); None = attention_mask.
        """
        weights = self.weights(progress)
        computed = [name for name in COMPONENTS if weights[name] > 0]
        if teacher_out is None and any(name in _TEACHER_COMPONENTS for name in computed):
            raise ValueError(
                f"teacher_out is None but components {[n for n in computed if n in _TEACHER_COMPONENTS]} "
                f"have weight > 0 at progress {progress!r}"
            )
        if token_mask is None:
            token_mask = attention_mask
        mask = None if token_mask is None else token_mask.bool()

        raw: dict[str, Tensor] = {}
        if "ce" in computed or "kd" in computed:
            # Sliced once, so ce and kd share one backward node on the student's logits.
            student_logits = self.shared_logits(student_out.logits)
        if "ce" in computed:
            raw["ce"] = ce_loss(student_logits, labels, ignore_index=self.ignore_index)
        if "kd" in computed:
            raw["kd"] = kd_loss(
                student_logits,
                self.shared_logits(teacher_out.logits, "teacher"),
                self.kd_temperature,
                mask=mask,
                kind=self.kd_kind,
                beta=self.jsd_beta,
            )
        if "feature" in computed:
            raw["feature"] = self._feature(student_out, teacher_out, mask)
        if "attention" in computed:
            raw["attention"] = self._attention(student_out, teacher_out, mask)

        scaled = {name: weights[name] * value for name, value in raw.items()}
        if scaled:
            total = sum(scaled.values())
        else:
            # Every weight is 0 at this progress (e.g. alpha_ce = alpha_kd = 0 in phase 1): a zero
            # that is still attached to the student's graph, so the caller's backward() works.
            total = student_out.logits.sum() * 0.0
        return LossBreakdown(total=total, raw=raw, weights=weights, scaled=scaled)

    def token_counts(self, labels: Tensor, token_mask: Tensor | None) -> dict[str, int]:
        """Per component, how many tokens its mean runs over: ce over its shifted targets (one fewer
        per row, fewer where labels are ignore_index), the others over the token mask's positions (the
        `token_mask` forward gets, or its attention mask). Weight each micro-batch's part by these to
        normalise by tokens over an accumulation window."""
        ce = int(ce_targets(labels, self.ignore_index).sum())
        masked = int(token_mask.bool().sum()) if token_mask is not None else int(labels.numel())
        return {name: ce if name == "ce" else masked for name in COMPONENTS}

    def _feature(self, student_out: Any, teacher_out: Any, mask: Tensor | None) -> Tensor:
        student_hidden = _layer_outputs(
            student_out, "student_out", "hidden_states", self.student_num_layers + 1
        )
        teacher_hidden = _layer_outputs(
            teacher_out, "teacher_out", "hidden_states", self.teacher_num_layers + 1
        )
        per_pair = []
        for projector, (s, t) in zip(self.projectors, self.layer_map):
            # Match the projector's dtype (fp32 master copy vs bf16 activations under some engines).
            projected = projector(student_hidden[s].to(projector.weight.dtype))  # (B, T, Hs) -> (B, T, Ht)
            per_pair.append(feature_loss(projected, teacher_hidden[t], norm=self.feature_norm, mask=mask))
        return torch.stack(per_pair).mean()

    def _attention(self, student_out: Any, teacher_out: Any, mask: Tensor | None) -> Tensor:
        student_attn = _layer_outputs(student_out, "student_out", "attentions", self.student_num_layers)
        teacher_attn = _layer_outputs(teacher_out, "teacher_out", "attentions", self.teacher_num_layers)
        per_pair = [
            attention_loss(student_attn[s - 1], teacher_attn[t - 1], mask) for s, t in self.attention_pairs
        ]
        return torch.stack(per_pair).mean()


def _layer_outputs(output: Any, who: str, attr: str, expected: int) -> Sequence[Tensor]:
    values = getattr(output, attr, None)
    if values is None or len(values) == 0:
        if attr == "attentions":
            raise RuntimeError(
                f"the attention weight is > 0 but {who}.attentions is empty: Hugging Face's sdpa/flash "
                "attention return no attention maps. Use eager attention "
                "(model.set_attn_implementation('eager')) and call the model with output_attentions=True"
            )
        raise RuntimeError(
            f"the feature weight is > 0 but {who}.hidden_states is empty: call the model with "
            "output_hidden_states=True (see DistillationLoss.required_outputs)"
        )
    if len(values) != expected:
        raise RuntimeError(f"{who}.{attr} has {len(values)} entries, expected {expected} for this model")
    return values
