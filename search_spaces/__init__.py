"""Named Ray Tune search spaces over raydistill config keys, kept as data.

A space is a dict from a dotted config key (`curriculum.phase1_end`, `loss.kd_kind`, ...) to a Tune
domain. `raydistill sweep --space NAME` samples one per trial and applies the values to the base
config as overrides, so a trial's config holds exactly these keys. Spaces only touch keys a trial may
change on its own (curriculum, loss, train): data and models are prepared once for the whole sweep.

| name           | keys                                                     |
| -------------- | -------------------------------------------------------- |
| `curriculum`   | `curriculum.phase1_end`, `curriculum.phase2_end`         |
| `feature_norm` | `loss.feature_norm`, `loss.alpha_feature`                |
| `temperature`  | `loss.kd_temperature`, `loss.kd_kind`                    |
| `full`         | all of the above                                         |

A module may also list `ANCHORS`: partial points tried first in every sweep of its space (their
other keys sampled), such as "no curriculum" for `curriculum`.

Each module's docstring says how its space is sampled and why. This package never imports
`orchestrator` (tests/test_layering.py).
"""

from __future__ import annotations

from typing import Any

from search_spaces import curriculum, feature_norm, full, temperature

_MODULES = {
    "curriculum": curriculum,
    "feature_norm": feature_norm,
    "temperature": temperature,
    "full": full,
}

SPACES: dict[str, dict[str, Any]] = {name: module.SPACE for name, module in _MODULES.items()}
DESCRIPTIONS: dict[str, str] = {name: module.DESCRIPTION for name, module in _MODULES.items()}
ANCHORS: dict[str, list[dict[str, Any]]] = {
    name: list(getattr(module, "ANCHORS", [])) for name, module in _MODULES.items()
}


def get_space(name: str) -> dict[str, Any]:
    """A copy of the named space (dotted config key -> Tune domain); ValueError names the known ones."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; known: {', '.join(SPACES)}")
    return dict(SPACES[name])


def get_anchors(name: str) -> list[dict[str, Any]]:
    """Copies of the named space's anchors (partial points tried first); ValueError if unknown."""
    get_space(name)
    return [dict(anchor) for anchor in ANCHORS[name]]
