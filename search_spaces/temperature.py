"""`temperature`: the logit-distillation term's temperature and divergence.

Keys: `loss.kd_temperature` over KD_TEMPERATURES and `loss.kd_kind` over forward_kl / reverse_kl /
jsd (jsd at the config's `loss.jsd_beta`). The KD term is scaled by T^2, so its magnitude stays
comparable across temperatures.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from workers.loss_config import KD_KINDS

KD_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)

SPACE: dict[str, Any] = {
    "loss.kd_temperature": tune.choice(list(KD_TEMPERATURES)),
    "loss.kd_kind": tune.choice(list(KD_KINDS)),
}

DESCRIPTION = "KD temperature (1-8) and divergence (forward KL, reverse KL, JSD)"
