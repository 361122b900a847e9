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

from workers.loss_config import CurriculumConfig, LossConfig

COMPONENTS = ("ce", "kd", "feature", "attention")


class CurriculumSchedule:
    """Per-component loss weights as a function of training progress.

    Args:
        curriculum: the phase boundaries p1 <= p2 and whether the curriculum is on (checked there).
        loss: the weight (alpha) of each of `COMPONENTS` (checked there).

    Plain attributes only, so instances pickle and compare by value.
    """

    def __init__(self, curriculum: CurriculumConfig, loss: LossConfig) -> None:
        self.phase1_end = curriculum.phase1_end
        self.phase2_end = curriculum.phase2_end
        self.enabled = curriculum.enabled
        # A copy: the schedule does not follow later edits of `loss`.
        self.alpha = {name: getattr(loss, f"alpha_{name}") for name in COMPONENTS}

    def _progress(self, progress: float) -> float:
        # bool is an int subclass: `True` is a caller's mistake, not 1.0.
        if isinstance(progress, bool):
            raise ValueError(f"progress must be a number, got {progress!r}")
        try:
            p = float(progress)
        except (TypeError, ValueError):
            raise ValueError(f"progress must be a number, got {progress!r}") from None
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
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
    return CurriculumSchedule(CurriculumConfig(**curriculum), LossConfig(**loss))
