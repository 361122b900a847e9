"""The curriculum: which loss components are on, and how strongly, at training progress p.

With p = step / total_steps in [0, 1]:

| phase | progress      | ce       | kd       | feature                              | attention       |
| ----- | ------------- | -------- | -------- | ------------------------------------ | --------------- |
| 1     | p < p1        | alpha_ce | alpha_kd | 0                                    | 0               |
| 2     | p1 <= p < p2  | alpha_ce | alpha_kd | alpha_feature * (p - p1) / (p2 - p1) | 0               |
| 3     | p >= p2       | alpha_ce | alpha_kd | alpha_feature                        | alpha_attention |

With p1 == p2 there is no phase 2: the schedule jumps from phase 1 to phase 3 at p2. With the
curriculum disabled every component has its alpha from progress 0 and the phase is always 3.

Pure python (no torch needed): the schedule is pickled into every Ray worker and Tune trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COMPONENTS = ("ce", "kd", "feature", "attention")


def _finite_float(name: str, value: object) -> float:
    # bool is an int subclass; `phase1_end=True` is a config mistake, not 1.0.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return as_float


class CurriculumSchedule:
    """Per-component loss weights as a function of training progress.

    Args:
        phase1_end: p1, end of phase 1 (ce + kd only), in [0, 1].
        phase2_end: p2, end of the feature ramp (phase 2), in [phase1_end, 1].
        alpha: weight >= 0 for each of `COMPONENTS`; at least one > 0.
        enabled: False gives every component its alpha from progress 0 (phase 3 throughout).

    Plain attributes only, so instances pickle and compare by value.
    """

    def __init__(
        self,
        phase1_end: float,
        phase2_end: float,
        alpha: Mapping[str, float],
        enabled: bool = True,
    ) -> None:
        p1 = _finite_float("phase1_end", phase1_end)
        p2 = _finite_float("phase2_end", phase2_end)
        if not 0.0 <= p1 <= 1.0:
            raise ValueError(f"phase1_end must be in [0, 1], got {phase1_end!r}")
        if not 0.0 <= p2 <= 1.0:
            raise ValueError(f"phase2_end must be in [0, 1], got {phase2_end!r}")
        if p2 < p1:
            raise ValueError(f"phase2_end must be >= phase1_end ({phase1_end!r}), got {phase2_end!r}")
        if not isinstance(alpha, Mapping):
            raise ValueError(f"alpha must be a mapping of {list(COMPONENTS)} to weights, got {alpha!r}")
        unknown = sorted(set(alpha) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"alpha has unknown component(s) {unknown}; components are {list(COMPONENTS)}")
        checked: dict[str, float] = {}
        for name in COMPONENTS:
            if name not in alpha:
                raise ValueError(f"alpha is missing component {name!r}")
            value = _finite_float(f"alpha[{name!r}]", alpha[name])
            if value < 0.0:
                raise ValueError(f"alpha[{name!r}] must be >= 0, got {alpha[name]!r}")
            checked[name] = value
        if not any(value > 0.0 for value in checked.values()):
            raise ValueError(f"alpha must have at least one weight > 0, got {checked!r}")
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be a bool, got {enabled!r}")

        self.phase1_end = p1
        self.phase2_end = p2
        self.alpha = checked
        self.enabled = enabled

    def _progress(self, progress: float) -> float:
        p = _finite_float("progress", progress)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress!r}")
        return p

    def phase(self, progress: float) -> int:
        """1, 2 or 3 (see the module table); always 3 when the curriculum is disabled."""
        p = self._progress(progress)
        if not self.enabled:
            return 3
        if p < self.phase1_end:
            return 1
        # With p1 == p2 this branch is empty: p >= p1 already means p >= p2.
        if p < self.phase2_end:
            return 2
        return 3

    def weights(self, progress: float) -> dict[str, float]:
        """Weight of every component in `COMPONENTS` at `progress`, as python floats."""
        phase = self.phase(progress)
        p = float(progress)
        weights = dict(self.alpha)
        if phase == 1:
            weights["feature"] = 0.0
            weights["attention"] = 0.0
        elif phase == 2:
            # p1 < p2 holds here (phase 2 is empty otherwise), so the ramp never divides by zero.
            ramp = (p - self.phase1_end) / (self.phase2_end - self.phase1_end)
            weights["feature"] = self.alpha["feature"] * ramp
            weights["attention"] = 0.0
        return weights

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurriculumSchedule):
            return NotImplemented
        return (self.phase1_end, self.phase2_end, self.alpha, self.enabled) == (
            other.phase1_end,
            other.phase2_end,
            other.alpha,
            other.enabled,
        )

    def __repr__(self) -> str:
        return (
            f"CurriculumSchedule(phase1_end={self.phase1_end!r}, phase2_end={self.phase2_end!r}, "
            f"alpha={self.alpha!r}, enabled={self.enabled!r})"
        )


def schedule_from_config(curriculum: Mapping[str, Any], loss: Mapping[str, Any]) -> CurriculumSchedule:
    """A run's schedule from the `curriculum` and `loss` sections of its resolved config (`Config.to_dict()`,
    a run dir's config.yaml): the one construction the workers, the report and the sweep all use."""
    return CurriculumSchedule(
        phase1_end=curriculum["phase1_end"],
        phase2_end=curriculum["phase2_end"],
        alpha={name: loss[f"alpha_{name}"] for name in COMPONENTS},
        enabled=curriculum.get("enabled", True),
    )
