"""The trial driver: one Tune trial, the same TorchTrainer as `raydistill train` run from inside a Tune
function trainable (`Tuner(trainer)` is deprecated in Ray Train V2).

How results reach Tune. `trainer.fit()` runs in a thread of the trial driver. A Train callback in the
Train controller (`TuneRelay`) passes each eval record (the ones holding `eval/ppl`) through a Ray
queue to the trial driver, which calls `ray.tune.report` itself. The stock `TuneReportCallback` only
forwards metrics; reporting from the driver lets PBT and HyperBand get real Tune checkpoints: with
those schedulers the Train checkpoint written at each eval is reported with it, and a trial that
Tune restarts from a checkpoint (PBT exploit, HyperBand resume) starts a fresh Train run from it.

Stopping. When Tune stops or pauses a trial, the trainable's `cleanup` (the `StopTrainRunsFirst`
mixin) writes the Train run's stop file and waits for `trainer.fit()` to return: the worker loop
checks the file at every step and returns, and the Train controller then releases its workers'
placement group itself, so the next trials get their CPUs (RELIABILITY.md, "Sweep trials").
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from orchestrator.errors import root_cause
from orchestrator.sweep.layout import CONFIG_PREFIX, EVAL_METRIC, START_STEP, TRIALS_DIR
from orchestrator.sweep.shared_prefix import fork_point, prefix_evals
from orchestrator.sweep.trials import keep_phases_left, sampled_params, trial_config
from orchestrator.train.telemetry import MetricsCallback
from orchestrator.train.trainer import STUDENT_DIR, PreparedRun, build_trainer

# Tune shows the first reported metrics in its progress table: put the distillation columns there.
LEAD_COLUMNS = ("phase", EVAL_METRIC, "eval_train_ratio", "step")
# A trial driver only waits on queues; its TorchTrainer's workers ask for their own resources.
DRIVER_CPU = 0.01
QUEUE_POLL_S = 1.0
# How long a stopping trial waits for its Train run to wind down (the workers' next report).
TRAIN_STOP_TIMEOUT_S = 300.0


@dataclass
class TrialSetup:
    """What every trial driver needs, shipped once through the object store (`tune.with_parameters`)."""

    base: dict[str, Any]  # the resolved base config
    prepared: PreparedRun  # data prepared once on the sweep driver, absolute paths
    sweep_dir: str
    tune_checkpoints: bool
    # Trained phase-1 prefixes trials fork from (orchestrator.sweep.shared_prefix), by prefix key.
    prefixes: dict[str, Any] = dataclasses.field(default_factory=dict)


class TuneRelay(UserCallback):
    """Runs in the Train controller: hands each eval record (and its checkpoint path) to the driver,
    then waits until Tune has decided on it.

    The driver acknowledges a record once `ray.tune.report` returns, i.e. once the scheduler and the
    stoppers let the trial go on, and writes the step to the trial's decision file, which the
    workers wait for after each eval (workers.tune_decision): a trial that Tune stops or pauses at
    an eval trains no step past it (RELIABILITY.md, "Sweep trials"). Once the trial is stopping (its
    stop file exists) nothing is waited on, so the controller never blocks while its workers wind down.
    """

    def __init__(self, queue, acks, with_checkpoints: bool, stop_file: str):
        self.queue = queue
        self.acks = acks
        self.with_checkpoints = with_checkpoints
        self.stop_file = stop_file

    def _until_stopping(self, attempt) -> None:
        from ray.util.queue import Empty, Full

        while not os.path.exists(self.stop_file):
            try:
                attempt()
                return
            except (Full, Empty):
                continue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        record = dict(metrics[0]) if metrics else {}
        if EVAL_METRIC not in record:
            return
        path = checkpoint.path if checkpoint is not None and self.with_checkpoints else None
        item = {"record": record, "checkpoint": path}
        self._until_stopping(lambda: self.queue.put(item, timeout=QUEUE_POLL_S))
        self._until_stopping(lambda: self.acks.get(timeout=QUEUE_POLL_S))


# The Train runs of the trial driver running in this process (one trial per actor: reuse_actors=False).
_TRAIN_RUNS: list[tuple[threading.Thread, Path]] = []


class StopTrainRunsFirst:
    """Mixin for the trial driver's Tune trainable (through `__mixins__`, the function-trainable hook).

    When Tune stops or pauses a trial it calls `cleanup` and then ends the trial's actor, which would
    take the Train controller down with it before it removes its workers' placement group. So
    `cleanup` first writes the stop file, which the worker loop checks at every step, and waits until
    `trainer.fit()` has returned: the workers leave at their next step and the controller releases
    their resources itself.
    """

    def cleanup(self):
        for _, stop_file in _TRAIN_RUNS:
            stop_file.touch()
        try:
            super().cleanup()
        finally:
            for thread, _ in _TRAIN_RUNS:
                thread.join(timeout=TRAIN_STOP_TIMEOUT_S)
            _TRAIN_RUNS.clear()


def _next_run_name(trial_dir: Path) -> str:
    taken = {p.name for p in trial_dir.iterdir()} if trial_dir.exists() else set()
    n = 1
    while f"run_{n}" in taken:
        n += 1
    return f"run_{n}"


class TrialFailed(RuntimeError):
    pass


def _tune_metrics(
    record: dict[str, Any], params: dict[str, Any], run_name: str, start_step: int
) -> dict[str, Any]:
    metrics = {k: record[k] for k in LEAD_COLUMNS if k in record}
    metrics.update({k: v for k, v in record.items() if not k.startswith("_")})
    # The values this trial really trains with (PBT restarts may hold some boundaries back).
    metrics.update({CONFIG_PREFIX + k: v for k, v in params.items()})
    metrics["train_run"] = run_name
    metrics[START_STEP] = start_step  # where this Train run began: a shared prefix's fork, or 0
    return metrics


def trial_driver(trial_params: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: a TorchTrainer over the base config with this trial's sampled values."""
    import ray.tune
    from ray.util.queue import Queue

    from workers.checkpointing import read_state
    from workers.tune_decision import write_decision

    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = Path(setup.sweep_dir) / TRIALS_DIR / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    params = sampled_params(trial_params)
    run_name, start_checkpoint, start_step = "run", None, 0
    restored = ray.tune.get_checkpoint()
    if restored is not None:
        # PBT exploit or HyperBand resume: a fresh Train run starting from Tune's checkpoint.
        start_checkpoint = restored.path
        state = read_state(start_checkpoint)
        start_step = int(state["step"])
        trained = json.loads((Path(start_checkpoint) / "config.json").read_text())
        params = keep_phases_left(params, trained["curriculum"], start_step, int(state["max_steps"]))
        run_name = _next_run_name(trial_dir)
    config = trial_config(setup.base, params, setup.tune_checkpoints)
    if restored is None and (fork := fork_point(config, setup.prefixes)) is not None:
        # Its phase 1 was trained once for the trials sharing it: start at this trial's phase-1 end,
        # after telling Tune the results it would have had until then (a stop here costs nothing).
        start_checkpoint, start_step = fork
        for record in prefix_evals(Path(setup.sweep_dir), config, start_step):
            ray.tune.report(_tune_metrics(record, params, run_name, start_step))

    run_dir = trial_dir / run_name
    stop_file = trial_dir / f"{run_name}.stop"
    decision_file = trial_dir / f"{run_name}.decided"
    for stale in (stop_file, decision_file):
        stale.unlink(missing_ok=True)  # left by an interrupted sweep that is now resumed
    prepared = dataclasses.replace(setup.prepared, config=config.to_dict()).with_runtime(
        student_dir=str(trial_dir / STUDENT_DIR),
        stop_file=str(stop_file),
        decision_file=str(decision_file),
        start_checkpoint=start_checkpoint,
    )

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    acks = Queue(maxsize=1, actor_options={"num_cpus": 0})
    relay = TuneRelay(queue, acks, setup.tune_checkpoints, str(stop_file))
    trainer = build_trainer(
        config, run_dir, prepared, callbacks=[MetricsCallback(str(trial_dir), echo=False), relay]
    )
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the driver thread below
            outcome["error"] = exc
        finally:
            try:
                queue.put(None, timeout=QUEUE_POLL_S)
            except Exception:  # the trial is stopping: nobody reads the queue any more
                pass

    thread = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    _TRAIN_RUNS.append((thread, stop_file))
    thread.start()
    try:
        while (item := queue.get()) is not None:
            checkpoint = item["checkpoint"]
            # Returns once Tune lets the trial go on (a stop or pause raises instead).
            ray.tune.report(
                _tune_metrics(item["record"], params, run_name, start_step),
                checkpoint=ray.tune.Checkpoint.from_directory(checkpoint) if checkpoint else None,
            )
            write_decision(decision_file, int(item["record"]["step"]))  # the workers go on
            acks.put(True)
    except BaseException:
        # Tune stopped or paused this trial (SystemExit from `ray.tune.report`): tell the workers.
        stop_file.touch()
        raise
    if "error" in outcome:
        raise TrialFailed(f"trial {trial_id}: {root_cause(outcome['error'])}") from outcome["error"]


trial_driver.__mixins__ = (StopTrainRunsFirst,)
