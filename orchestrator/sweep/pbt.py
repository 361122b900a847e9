"""Population Based Training that never perturbs on a trial's final result.

A module of its own (and at module level) because Tune pickles the scheduler into the experiment
state that `raydistill sweep --resume` restores.
"""

from __future__ import annotations

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class FinalResultPBT(PopulationBasedTraining):
    """PBT, except that a result at step >= max_steps never triggers a perturbation.

    There is nothing left to train then: an exploit restarts the trial from the donor's checkpoint,
    which may be the donor's own final one. Seen here, a trial exploited on its step-20-of-20 result
    restarted from the donor's step-20 checkpoint, trained nothing, reported nothing, and ended with
    no result of its own (its row said `not_started`)."""

    def __init__(self, *, max_steps: int, **kwargs):
        super().__init__(**kwargs)
        self._max_steps = max_steps

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_steps:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
