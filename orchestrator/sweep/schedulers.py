"""Tune's trial schedulers (ASHA, HyperBand, PBT, FIFO) and stopper for a sweep, sized to its run."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.config import Config
from orchestrator.sweep.settings import SweepSettings

# ASHA keeps the best 1/4 at each rung (Ray's default); rungs at ~1/16, ~1/4 and all of a run.
ASHA_REDUCTION = 4
HYPERBAND_REDUCTION = 3
PBT_QUANTILE = 0.25


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)


def asha_grace_steps(max_steps: int, eval_every: int) -> int:
    """ASHA's first rung: about max_steps / reduction^2, on an eval step (rungs are judged on evals)."""
    return min(_round_up(max_steps / ASHA_REDUCTION**2, eval_every), max_steps)


def pbt_interval_steps(max_steps: int, eval_every: int) -> int:
    """PBT perturbs about four times per run, at evals."""
    return min(_round_up(max_steps / 4, eval_every), max_steps)


class Rederive:
    """PBT explore step: recompute derived keys (`tune.sample_from` domains) from the mutated config,
    so constructions such as the curriculum's phase1_end = fraction * phase2_end still hold."""

    def __init__(self, derived: dict[str, Any]):
        self.derived = derived

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, domain in self.derived.items():
            config[key] = domain.func(config)
        return config


def pbt_mutations(space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hyperparam_mutations, derived keys) for PBT. Categorical domains mutate to a neighbour."""
    from ray.tune.search.sample import Categorical, Function

    mutations, derived = {}, {}
    for key, domain in space.items():
        if isinstance(domain, Function):
            derived[key] = domain
        elif isinstance(domain, Categorical):
            mutations[key] = list(domain.categories)
        else:
            mutations[key] = domain
    return mutations, derived


def build_scheduler(name: str, config: Config, space: dict[str, Any]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    max_steps, eval_every = config.train.max_steps, config.train.eval_every
    if name == "asha":
        return ASHAScheduler(
            time_attr="step",
            max_t=max_steps,
            grace_period=asha_grace_steps(max_steps, eval_every),
            reduction_factor=ASHA_REDUCTION,
        )
    if name == "fifo":
        return FIFOScheduler()
    if name == "hyperband":
        # Synchronous HyperBand counts in evals (one Tune result per eval), pausing trials in between.
        return HyperBandScheduler(
            time_attr="training_iteration",
            max_t=math.ceil(max_steps / eval_every),
            reduction_factor=HYPERBAND_REDUCTION,
        )
    from orchestrator.sweep.pbt import FinalResultPBT

    mutations, derived = pbt_mutations(space)
    interval = pbt_interval_steps(max_steps, eval_every)
    return FinalResultPBT(
        max_steps=max_steps,
        time_attr="step",
        perturbation_interval=interval,
        burn_in_period=interval,
        hyperparam_mutations=mutations,
        custom_explore_fn=Rederive(derived) if derived else None,
        quantile_fraction=PBT_QUANTILE,
    )


def build_stopper(settings: SweepSettings):
    from orchestrator.sweep.stoppers import EvalTrainRatioStopper

    return EvalTrainRatioStopper(settings.max_eval_train_ratio, settings.ratio_grace_evals)
