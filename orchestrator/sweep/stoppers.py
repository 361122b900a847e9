"""Tune stoppers for distillation sweeps: small, state keyed by trial id, picklable (Tune saves them in
its experiment state for --resume) and testable without a cluster.

`EvalTrainRatioStopper` stops a trial whose `eval_train_ratio` (eval total loss over the train total
at the same weights, reported by the worker loop at each eval) goes above `max_ratio`, after
`grace_evals` evals that are never judged (the first evals of a fresh student are noisy). It sits in
`tune.RunConfig(stop=...)`, combined with the scheduler's own decisions; compose it with other
stoppers through `ray.tune.stopper.CombinedStopper`.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.stopper import Stopper

RATIO_METRIC = "eval_train_ratio"


class EvalTrainRatioStopper(Stopper):
    """Stop a trial when its eval/train loss ratio exceeds `max_ratio` (overfitting or a train/eval gap).

    Args:
        max_ratio: the limit; a trial stops at the first judged eval with `eval_train_ratio > max_ratio`.
        grace_evals: evals per trial that are counted but never judged.
        metric: the result key holding the ratio. Results without it (or with a non-finite value,
            e.g. a zero train total) are ignored.

    State is plain dicts keyed by trial id, so one instance serves every trial and pickles with the
    experiment state (Tune saves it for `--resume`).
    """

    def __init__(self, max_ratio: float = 2.0, grace_evals: int = 1, metric: str = RATIO_METRIC):
        if not max_ratio > 0:
            raise ValueError(f"max_ratio must be > 0, got {max_ratio!r}")
        if isinstance(grace_evals, bool) or not isinstance(grace_evals, int) or grace_evals < 0:
            raise ValueError(f"grace_evals must be an integer >= 0, got {grace_evals!r}")
        self.max_ratio = float(max_ratio)
        self.grace_evals = grace_evals
        self.metric = metric
        self.evals_seen: dict[str, int] = {}
        # trial id -> (step or None, ratio) of the eval that stopped it
        self.stopped: dict[str, tuple[Any, float]] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.metric)
        if value is None:
            return False
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(ratio):
            return False
        seen = self.evals_seen.get(trial_id, 0) + 1
        self.evals_seen[trial_id] = seen
        if seen <= self.grace_evals or ratio <= self.max_ratio:
            return False
        self.stopped[trial_id] = (result.get("step"), ratio)
        return True

    def stop_all(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"EvalTrainRatioStopper(max_ratio={self.max_ratio}, grace_evals={self.grace_evals})"


def would_stop(results: list[dict[str, Any]], max_ratio: float, grace_evals: int) -> bool:
    """Replay a trial's results through a fresh stopper: True if the last one is where it stopped.

    Used to label a finished trial's stop reason from its recorded results, which also works for
    sweeps resumed from disk, where the live stopper's state is not at hand.
    """
    stopper = EvalTrainRatioStopper(max_ratio=max_ratio, grace_evals=grace_evals)
    decisions = [stopper("replay", result) for result in results]
    return bool(decisions) and decisions[-1]
