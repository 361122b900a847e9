"""Population Based Training that never perturbs on a trial's final result.

A module of its own (and at module level) because Tune pickles the scheduler into the experiment
state that `raydistill sweep --resume` restores.
"""

from __future__ import annotations

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class FinalResultPBT(PopulationBasedTraining):
    """PBT, except that a result at step >= max_steps never triggers a perturbation.

    There is nothing left to train then: an exploit would restart the trial from the donor's (maybe
    final) checkpoint, and it would end with no result of its own (RELIABILITY.md, "Sweep trials")."""

    def __init__(self, *, max_steps: int, **kwargs):
        super().__init__(**kwargs)
        self._max_steps = max_steps

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_steps:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
