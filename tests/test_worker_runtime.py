"""What the driver hands each worker (workers/runtime.py), and the worker loop's per-step plan
(workers/loop.py), without Ray."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.train.trainer import prepare_run
from workers.loop import plan_step
from workers.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {
    "max_steps": 12,
    "eval_every": 4,
    "checkpoint_every": 6,
    "log_every": 5,
    "max_nonfinite_in_a_row": 2,
}


def test_prepare_run_hands_the_workers_a_runtime_that_pickles_and_carries_verbose(tiny_data_dir, tmp_path):
    config = load_config(ROOT / "configs" / "tiny.yaml", [f"data.source={tiny_data_dir}"])
    prepared = prepare_run(config, tmp_path / "run", verbose=True)
    runtime = prepared.runtime
    assert prepared.loop_config == {"config": config.to_dict(), "runtime": runtime}
    assert runtime.verbose is True
    assert runtime.tokenizer == str(tiny_data_dir / "tokenizer")
    assert runtime.student_dir == str(tmp_path / "run" / "student")
    # A plain training run: no sweep or test role.
    assert (runtime.stop_file, runtime.decision_file, runtime.start_checkpoint, runtime.faults) == (None,) * 4
    assert (runtime.stop_at_step, runtime.checkpoint_steps, runtime.interrupt_file) == (None, (), None)
    assert pickle.loads(pickle.dumps(prepared.loop_config)) == prepared.loop_config
    assert prepare_run(config, tmp_path / "run").runtime.verbose is False


def test_a_roles_fields_are_replaced_on_a_copy(tmp_path):
    from orchestrator.train.trainer import PreparedRun

    base = PreparedRun({"train": {}}, WorkerRuntime("tok", 64, "student"), tmp_path)
    trial = base.with_runtime(stop_file="s", decision_file="d")
    assert (trial.runtime.stop_file, trial.runtime.decision_file, trial.runtime.tokenizer) == (
        "s",
        "d",
        "tok",
    )
    assert base.runtime.stop_file is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.runtime.stop_file = "other"


def plan(step, **kwargs):
    args = {"checkpoint_steps": set(), "skipped": False, "interrupt_requested": False, "nonfinite_streak": 0}
    args.update(kwargs)
    return plan_step(TRAIN, step, **args)


def test_a_plain_step_is_not_logged_and_the_cadences_are_the_configs():
    assert plan(1) == plan_step(TRAIN, 1, set(), False, False, 0)
    assert not (plan(1).log or plan(1).eval or plan(1).checkpoint)
    assert plan(5).log and not plan(5).eval
    assert plan(4).eval and plan(4).log and not plan(4).checkpoint
    assert plan(6).checkpoint and plan(6).log and not plan(6).eval
    last = plan(12)
    assert last.eval and last.checkpoint and last.log


def test_a_prefix_runs_fork_steps_are_saved_and_logged():
    assert plan(3, checkpoint_steps={3}).checkpoint and plan(3, checkpoint_steps={3}).log


def test_an_interrupt_checkpoints_the_step_except_the_last_which_ends_the_run_anyway():
    interrupted = plan(3, interrupt_requested=True)
    assert interrupted.interrupted and interrupted.checkpoint and interrupted.log
    last = plan(12, interrupt_requested=True)
    assert not last.interrupted and last.checkpoint


def test_a_skipped_step_is_logged_and_too_many_in_a_row_stop_the_run():
    assert plan(1, skipped=True, nonfinite_streak=1).log
    assert not plan(1, skipped=True, nonfinite_streak=1).too_many
    assert plan(2, skipped=True, nonfinite_streak=2).too_many
