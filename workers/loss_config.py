"""The typed loss and curriculum settings, each rule checked once, when the object is built.

Pure python, no torch: the driver's config (`orchestrator/config.py` composes these into the run
config), the search spaces and the report import it at every CLI start without loading torch.
Rules that need the models (layer_map indices against the model depths) stay with the loss module
(`workers/distill_loss.py`), the one place that knows both depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")
FEATURE_NORMS = ("none", "layernorm", "std", "cosine")


class FieldError(ValueError):
    """A rule a field breaks: `field=value: rule`. A rule naming another field writes it as
    `{prefix}name`, so the run config can name both by their dotted keys (`with_prefix("loss.")`)."""

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(self.with_prefix(""))

    def with_prefix(self, prefix: str) -> str:
        return f"{prefix}{self.field}={self.value!r}: {self.rule.replace('{prefix}', prefix)}"


def _require(condition: bool, field: str, value: Any, rule: str) -> None:
    if not condition:
        raise FieldError(field, value, rule)


def _number(field: str, value: Any) -> float:
    # bool is an int subclass; `phase1_end: true` is a config mistake, not 1.0.
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool), field, value, "must be a number"
    )
    return float(value)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class LossConfig:
    """Weights and knobs of the distillation loss (see `workers.losses` for what each knob does)."""

    # The weight of each part; the curriculum ramps feature and attention in (workers/curriculum.py).
    alpha_ce: float = 0.3
    alpha_kd: float = 0.7
    alpha_feature: float = 1.0
    alpha_attention: float = 1.0
    # Logit distillation: T > 0, the divergence, and jsd's teacher weight (used by kd_kind "jsd" only).
    kd_temperature: float = 2.0
    kd_kind: str = "forward_kl"
    jsd_beta: float = 0.5
    # How hidden states are compared once the student's is projected to the teacher's width.
    feature_norm: str = "layernorm"
    # "auto" (uniform, last student layer to last teacher layer) or a list of [student, teacher] pairs
    # of hidden_states indices (0 = embeddings).
    layer_map: str | list = "auto"

    def __post_init__(self) -> None:
        alphas = []
        for name in ("alpha_ce", "alpha_kd", "alpha_feature", "alpha_attention"):
            value = _number(name, getattr(self, name))
            # NaN fails `>= 0` too.
            _require(value >= 0.0 and math.isfinite(value), name, value, "must be >= 0 and finite")
            setattr(self, name, value)
            alphas.append(value)
        _require(any(a > 0 for a in alphas), "alpha_*", alphas, "at least one must be > 0")

        self.kd_temperature = _number("kd_temperature", self.kd_temperature)
        _require(
            self.kd_temperature > 0 and math.isfinite(self.kd_temperature),
            "kd_temperature",
            self.kd_temperature,
            "must be > 0 and finite",
        )
        _require(self.kd_kind in KD_KINDS, "kd_kind", self.kd_kind, f"must be one of {list(KD_KINDS)}")
        self.jsd_beta = _number("jsd_beta", self.jsd_beta)
        _require(0.0 <= self.jsd_beta <= 1.0, "jsd_beta", self.jsd_beta, "must be in [0, 1]")
        _require(
            self.feature_norm in FEATURE_NORMS,
            "feature_norm",
            self.feature_norm,
            f"must be one of {list(FEATURE_NORMS)}",
        )
        self._check_layer_map()

    def _check_layer_map(self) -> None:
        layer_map = self.layer_map
        if isinstance(layer_map, str):
            _require(
                layer_map == "auto",
                "layer_map",
                layer_map,
                "must be 'auto' or a list of [student, teacher] pairs",
            )
            return
        _require(
            isinstance(layer_map, (list, tuple)),
            "layer_map",
            layer_map,
            "must be 'auto' or a list of [student, teacher] pairs",
        )
        _require(len(layer_map) > 0, "layer_map", layer_map, "must not be empty")
        for pair in layer_map:
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_index(i) for i in pair)
            _require(
                ok, "layer_map", layer_map, "each entry must be [student_layer, teacher_layer], ints >= 0"
            )


@dataclass
class CurriculumConfig:
    """Phase boundaries as fractions of training (the phase table: `workers/curriculum.py`)."""

    enabled: bool = True
    phase1_end: float = 0.3
    phase2_end: float = 0.6

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "enabled", self.enabled, "must be true or false")
        for name in ("phase1_end", "phase2_end"):
            value = _number(name, getattr(self, name))
            # NaN and inf fail the range too.
            _require(0.0 <= value <= 1.0, name, value, "must be in [0, 1]")
            setattr(self, name, value)
        _require(
            self.phase1_end <= self.phase2_end,
            "phase2_end",
            self.phase2_end,
            f"must be >= {{prefix}}phase1_end ({self.phase1_end!r})",
        )
