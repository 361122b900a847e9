"""`full`: every named space at once (curriculum, feature_norm, temperature).

The keys of the parts do not overlap (a test checks it), so the union keeps each part's sampling
rules, including the curriculum's ordering by construction.
"""

from __future__ import annotations

from typing import Any

from search_spaces import curriculum, feature_norm, temperature

PARTS = (curriculum, feature_norm, temperature)

SPACE: dict[str, Any] = {key: domain for part in PARTS for key, domain in part.SPACE.items()}

# The parts' anchors, their other keys sampled.
ANCHORS: list[dict[str, Any]] = [anchor for part in PARTS for anchor in getattr(part, "ANCHORS", [])]

DESCRIPTION = "all of curriculum, feature_norm and temperature together"
