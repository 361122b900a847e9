"""EvalTrainRatioStopper without a cluster: the limit, the grace evals, per-trial state, pickling."""

from __future__ import annotations

import math
import pickle

import pytest
from ray import cloudpickle
from ray.tune.stopper import CombinedStopper, MaximumIterationStopper

from orchestrator.sweep.stoppers import EvalTrainRatioStopper, would_stop


def evals(*ratios: float) -> list[dict]:
    return [{"step": 10 * (i + 1), "eval_train_ratio": r} for i, r in enumerate(ratios)]


def decisions(stopper, trial_id: str, results: list[dict]) -> list[bool]:
    return [stopper(trial_id, r) for r in results]


def test_stops_only_above_the_limit():
    stopper = EvalTrainRatioStopper(max_ratio=2.0, grace_evals=0)
    assert decisions(stopper, "a", evals(1.0, 1.9, 2.0)) == [False, False, False]
    assert stopper("a", {"step": 40, "eval_train_ratio": 2.01}) is True
    assert stopper.stopped == {"a": (40, 2.01)}


def test_grace_evals_are_never_judged():
    stopper = EvalTrainRatioStopper(max_ratio=2.0, grace_evals=2)
    assert decisions(stopper, "a", evals(9.0, 9.0, 9.0)) == [False, False, True]


def test_results_without_a_finite_ratio_are_ignored():
    stopper = EvalTrainRatioStopper(max_ratio=2.0, grace_evals=1)
    results = [{"step": 5, "loss/total": 3.0}, {"step": 10, "eval_train_ratio": math.nan}]
    assert decisions(stopper, "a", results) == [False, False]
    assert stopper.evals_seen == {}
    # the first real eval is still the grace eval
    assert decisions(stopper, "a", evals(5.0, 5.0)) == [False, True]


def test_state_is_per_trial():
    stopper = EvalTrainRatioStopper(max_ratio=2.0, grace_evals=1)
    assert stopper("a", {"eval_train_ratio": 3.0}) is False  # a's grace eval
    assert stopper("b", {"eval_train_ratio": 3.0}) is False  # b's own grace eval
    assert stopper("a", {"eval_train_ratio": 3.0}) is True
    assert stopper("b", {"eval_train_ratio": 1.0}) is False
    assert set(stopper.stopped) == {"a"}
    assert stopper.stop_all() is False


def test_pickle_round_trip_keeps_state():
    stopper = EvalTrainRatioStopper(max_ratio=1.5, grace_evals=1)
    stopper("a", {"eval_train_ratio": 1.0})
    clone = pickle.loads(pickle.dumps(stopper))
    assert (clone.max_ratio, clone.grace_evals, clone.evals_seen) == (1.5, 1, {"a": 1})
    # the grace eval was used before pickling: the clone judges the next one
    assert clone("a", {"eval_train_ratio": 1.6}) is True


def test_combines_with_other_stoppers():
    combined = CombinedStopper(
        EvalTrainRatioStopper(max_ratio=2.0, grace_evals=0), MaximumIterationStopper(max_iter=3)
    )
    assert combined("a", {"eval_train_ratio": 1.0}) is False
    assert combined("a", {"eval_train_ratio": 2.5}) is True  # the ratio stopper
    assert [combined("b", {"eval_train_ratio": 1.0}) for _ in range(3)] == [False, False, True]  # max iter
    # Tune saves its experiment state (stoppers included) with cloudpickle
    clone = cloudpickle.loads(cloudpickle.dumps(combined))
    assert clone("c", {"eval_train_ratio": 1.0}) is False


def test_replay_labels_the_stopping_result():
    assert would_stop(evals(1.0, 2.5), max_ratio=2.0, grace_evals=1) is True
    assert would_stop(evals(2.5), max_ratio=2.0, grace_evals=1) is False  # only a grace eval
    assert would_stop(evals(2.5, 1.0), max_ratio=2.0, grace_evals=0) is False  # went on after it
    assert would_stop([], max_ratio=2.0, grace_evals=0) is False


@pytest.mark.parametrize(
    "kwargs", [{"max_ratio": 0}, {"max_ratio": -1}, {"grace_evals": -1}, {"grace_evals": 1.5}]
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        EvalTrainRatioStopper(**kwargs)
