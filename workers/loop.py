"""`train_loop_per_worker`: what each Ray Train worker runs.

Everything arrives through the loop config (the function is pickled to other processes, so no module
globals): `{"config": <resolved run config dict>, "runtime": WorkerRuntime}` (workers/runtime.py).
Every rank calls `ray.train.report` the same number of times (it is a barrier in Train V2) and all
reported metrics are all-reduced first, since only rank 0's are kept. So every decision below is
taken from values equal on all ranks (the step, the config, flags all-reduced with `any_rank`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers import ray_console
from workers.checkpointing import saved_checkpoint
from workers.dist import any_rank, barrier
from workers.export import export_student
from workers.records import ThroughputWindow, TrainRawAverager, add_eval, step_record
from workers.runtime import WorkerRuntime
from workers.step import train_step
from workers.tune_decision import wait_for_decision
from workers.worker_errors import worker_failed
from workers.worker_setup import Worker, set_up

if TYPE_CHECKING:
    from workers.step import StepResult


class TooManyNonFiniteSteps(RuntimeError):
    pass


@dataclass(frozen=True)
class StepPlan:
    """What a worker does once step `step` is trained."""

    eval: bool
    checkpoint: bool
    interrupted: bool  # the driver asked to stop: checkpoint this step, then leave
    log: bool  # report a record (every eval and checkpoint is also logged)
    too_many: bool  # too many non-finite steps in a row: report, then fail the run


def plan_step(
    train: dict[str, Any],
    step: int,
    checkpoint_steps: set[int],
    skipped: bool,
    interrupt_requested: bool,
    nonfinite_streak: int,
) -> StepPlan:
    """The plan after step `step` (1-based) from the config's `train` section; `checkpoint_steps` are
    extra steps to save (a prefix run's fork steps)."""
    is_last = step == int(train["max_steps"])
    do_eval = step % int(train["eval_every"]) == 0 or is_last
    interrupted = interrupt_requested and not is_last  # the last step's checkpoint and export follow anyway
    do_checkpoint = (
        step % int(train["checkpoint_every"]) == 0 or is_last or step in checkpoint_steps or interrupted
    )
    do_log = step % int(train["log_every"]) == 0 or do_eval or do_checkpoint or skipped
    too_many = nonfinite_streak >= int(train["max_nonfinite_in_a_row"])
    return StepPlan(do_eval, do_checkpoint, interrupted, do_log, too_many)


class RunControl:
    """The files that end a run early, looked at by every rank after each step (one all-reduce each,
    so all ranks leave at the same step)."""

    def __init__(self, runtime: WorkerRuntime):
        self.stop_file = runtime.stop_file
        self.interrupt_file = runtime.interrupt_file

    def stopped(self) -> bool:
        """Tune stopped this sweep trial (orchestrator/sweep/trial_driver.py)."""
        return bool(self.stop_file) and any_rank(os.path.exists(self.stop_file))

    def interrupt_requested(self) -> bool:
        """The driver got Ctrl-C / SIGTERM (orchestrator/train/interrupt.py)."""
        return bool(self.interrupt_file) and any_rank(os.path.exists(self.interrupt_file))


class TrainingLoop:
    """The steps of one set-up worker, from its restored position to the run's end."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.train = worker.config["train"]
        self.max_steps = int(self.train["max_steps"])
        # A prefix run trains on the full run's schedule but stops early (WorkerRuntime.stop_at_step).
        self.stop_at = int(worker.runtime.stop_at_step or self.max_steps)
        self.checkpoint_steps = {int(s) for s in worker.runtime.checkpoint_steps}
        self.control = RunControl(worker.runtime)
        self.averager = TrainRawAverager()
        self.window = ThroughputWindow()
        self.nonfinite_streak = 0

    @property
    def exports(self) -> bool:
        """Whether a run that reaches `stop_at` exports the student: a prefix run's checkpoints are what
        the trials need, not a half-trained student."""
        return self.stop_at >= self.max_steps

    def run(self) -> bool:
        """Train up to `stop_at`. False when the run left early (stopped by Tune, or interrupted)."""
        step = self.worker.position.step
        while step < self.stop_at:
            # Checked every step, not at the next report, so a trial Tune stopped trains no further
            # while Ray tears it down.
            if self.control.stopped():
                return False
            progress = step / self.max_steps
            result = self.train_one_step(step, progress)
            step += 1
            plan = plan_step(
                self.train,
                step,
                self.checkpoint_steps,
                result.skipped,
                self.control.interrupt_requested(),
                self.nonfinite_streak,
            )
            if not (plan.log or plan.too_many):
                continue
            record = self.record(step, progress, result, plan.eval)
            if plan.too_many:
                self.fail(record, step, result)
            self.report(step, record, plan.checkpoint)
            if plan.interrupted:
                return False  # no export: the rerun resumes from this checkpoint
            if plan.eval:
                self.hand_off_to_tune(step)
            self.window.reset()
        return True

    def train_one_step(self, step: int, progress: float) -> StepResult:
        """Step `step + 1`, with any injected faults around it, and its non-finite bookkeeping."""
        worker = self.worker
        worker.faults.before_step(step + 1)
        window = worker.train_iter.window(int(self.train["grad_accum"]))
        result = train_step(worker.engine, worker.teacher, window, progress)
        worker.faults.after_step()
        self.window.add(result.tokens, result.trained)
        if result.skipped:
            worker.position.nonfinite_skipped += 1
            self.nonfinite_streak += 1
        else:
            self.nonfinite_streak = 0
            self.averager.add(result.metrics)
            worker.position.tokens_trained += result.trained  # a skipped step trained on nothing
        return result

    def record(self, step: int, progress: float, result: StepResult, with_eval: bool) -> dict[str, Any]:
        worker = self.worker
        record = step_record(
            step,
            self.max_steps,
            progress,
            phase=worker.loss.schedule.phase(progress),
            lr=float(worker.engine.optimizer.param_groups[0]["lr"]),
            tokens_per_s=self.window.tokens_per_s(),
            tokens_trained=worker.position.tokens_trained,
            trained_share=self.window.trained_share(),
            nonfinite_skipped=worker.position.nonfinite_skipped,
            result=result,
            static=worker.static,
            stop_at=self.stop_at,
        )
        if with_eval:
            add_eval(
                record, worker.engine, worker.teacher, worker.evals, progress, worker.loss, self.averager
            )
        return record

    def fail(self, record: dict[str, Any], step: int, result: StepResult) -> None:
        """Report the step, then fail loudly; the last good checkpoint stays the run's latest."""
        import ray.train

        ray.train.report(record)
        raise TooManyNonFiniteSteps(
            f"{self.nonfinite_streak} non-finite steps in a row (components: {', '.join(result.nonfinite)}) "
            f"at step {step}; stopping. The last good checkpoint is kept (train.max_nonfinite_in_a_row)"
        )

    def report(self, step: int, record: dict[str, Any], checkpoint: bool) -> None:
        """Report the record to Ray Train, with a checkpoint of this step when planned."""
        import ray.train

        worker = self.worker
        worker.position.step, worker.position.data = step, worker.train_iter.position()
        if not checkpoint:
            ray.train.report(record)
            return
        with saved_checkpoint(
            worker.engine, worker.position, worker.config, worker.rank, self.max_steps
        ) as d:
            ray.train.report(
                record,
                checkpoint=ray.train.Checkpoint.from_directory(d),
                checkpoint_upload_fn=worker.faults.checkpoint_upload_fn(step),  # None: Ray's own copy
            )

    def hand_off_to_tune(self, step: int) -> None:
        """A sweep trial's: Tune may stop it on this eval, so train no step past it until Tune has
        decided (workers/tune_decision.py)."""
        runtime = self.worker.runtime
        if runtime.decision_file:
            wait_for_decision(runtime.decision_file, runtime.stop_file, step)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train, or raise `WorkerFailed`: the error classified (user input or bug) with its traceback,
    which the driver turns into one line and a log file (workers/worker_errors.py)."""
    import ray.train

    config, runtime = loop_config["config"], loop_config["runtime"]
    ray_console.quiet_train_worker(runtime.verbose)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    try:
        run_worker(config, runtime, rank, context.get_world_size())
    except Exception as exc:
        # `from None`: Ray's copy of the traceback stays short; the full one travels in the error.
        raise worker_failed(exc, rank) from None


def run_worker(config: dict[str, Any], runtime: WorkerRuntime, rank: int, world: int) -> None:
    """Set up, train to the run's end, export the student."""
    worker = set_up(config, runtime, rank, world)
    loop = TrainingLoop(worker)
    if not loop.run() or not loop.exports:
        return
    zero_stage = int(worker.config["deepspeed"]["zero_stage"])
    export_student(worker.engine, worker.tokenizer, runtime.student_dir, worker.rank, zero_stage)
    barrier()
