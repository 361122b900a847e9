"""`feature_norm`: how the hidden-state loss is normalised, crossed with its weight.

Keys: `loss.feature_norm` over none / layernorm / std / cosine, and `loss.alpha_feature` over
FEATURE_ALPHAS. The two are searched together because their scales are tied: a raw MSE (`none`)
can be thousands of times a cosine distance, so a weight that suits one swamps or mutes the other.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from workers.loss_config import FEATURE_NORMS

FEATURE_ALPHAS = (0.03, 0.1, 0.3, 1.0, 3.0)

SPACE: dict[str, Any] = {
    "loss.feature_norm": tune.choice(list(FEATURE_NORMS)),
    "loss.alpha_feature": tune.choice(list(FEATURE_ALPHAS)),
}

DESCRIPTION = "feature-loss normalisation (none/layernorm/std/cosine) crossed with loss.alpha_feature"
