"""`curriculum`: where the curriculum's phase boundaries fall.

Keys (dotted config keys, as stored in every trial's config):

- `curriculum.phase2_end`: drawn from `PHASE2_ENDS`, 0 to 0.8, denser near 0.
- `curriculum.phase1_end`: derived, `fraction * phase2_end` with `fraction` drawn from
  `PHASE1_FRACTIONS` (0, 1/4, 1/2, 3/4) inside the sampling function.

Ordering holds by construction, so no sample is ever rejected: phase1_end < phase2_end whenever
phase2_end > 0, and phase1_end == phase2_end == 0 at the one point where both are 0. The fraction is
an implementation detail of the sampler: it is not a config key and does not appear in the trial's
config, only the resulting `curriculum.phase1_end` does.

Why the space reaches down to 0: phase2_end == 0 puts every component on from step 0, which is the
same schedule as no curriculum at all. Measured by hand on the demo's kind of setup (1.4M student, 6.8M teacher, 600 steps), the
seed's 0.3/0.6 boundaries gave eval ppl 33.9 where every part from the start gave 28.5, so "no
curriculum" must be a point the search can find. The seed point 0.3/0.6 is in the space too
(0.6 * 1/2). `ANCHORS` puts "no curriculum" first in every sweep of this space, so a sweep's
recommendation is never a curriculum that loses to none at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import tune
from ray.tune.search.sample import Domain
from ray.tune.search.variant_generator import RecursiveDependencyError

PHASE2_ENDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
PHASE1_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def sampled_value(spec: Any, key: str) -> Any:
    """The value already drawn for `key` in this trial.

    Tune hands a `sample_from` function the trial spec (`{"config": {...}}`); PBT's explore step
    (orchestrator.sweep) hands it the config itself. If Tune has not drawn `key` yet, raising
    `RecursiveDependencyError` makes it draw the other keys first and call again.
    """
    config = spec["config"] if "config" in spec else spec
    value = config[key]
    if isinstance(value, Domain):
        raise RecursiveDependencyError(f"{key} is not sampled yet")
    return value


def phase1_end_from_fraction(spec: Any) -> float:
    """`curriculum.phase1_end = fraction * curriculum.phase2_end`, fraction from PHASE1_FRACTIONS.

    Uses numpy's global generator (Tune does not pass one to `sample_from`); `raydistill sweep`
    seeds it so a sweep's samples repeat with the same `--seed`.
    """
    phase2_end = float(sampled_value(spec, "curriculum.phase2_end"))
    fraction = float(np.random.choice(PHASE1_FRACTIONS))
    return round(fraction * phase2_end, 4)


SPACE: dict[str, Any] = {
    "curriculum.phase2_end": tune.choice(list(PHASE2_ENDS)),
    "curriculum.phase1_end": tune.sample_from(phase1_end_from_fraction),
}

# Tried first in every sweep of this space (then sampling fills the rest): no curriculum, the
# baseline any found boundaries must beat.
ANCHORS: list[dict[str, Any]] = [{"curriculum.phase1_end": 0.0, "curriculum.phase2_end": 0.0}]

DESCRIPTION = (
    "curriculum phase boundaries: phase2_end in [0, 0.8] (0 = no curriculum), "
    "phase1_end = fraction * phase2_end, so phase1_end <= phase2_end by construction"
)
