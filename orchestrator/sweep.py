"""Ray Tune sweeps over distillation configs: the trial driver and the Tuner around it.

Each Tune trial is a function trainable (`trial_driver`) that builds the same TorchTrainer as
`raydistill train` and calls `trainer.fit()` (the Ray Train V2 pattern, RAY_DEEPSPEED_NOTES.md).
Data is prepared once, on the sweep driver, before the Tuner starts; trials share it.

How results reach Tune. `trainer.fit()` runs in a thread of the trial driver. A Train callback in the
Train controller (`TuneRelay`) passes each eval record (the ones holding `eval/ppl`) through a Ray
queue to the trial driver, which calls `ray.tune.report` itself. The stock `TuneReportCallback` only
forwards metrics; reporting from the driver lets PBT and HyperBand get real Tune checkpoints: with
those schedulers the Train checkpoint written at each eval is reported with it, and a trial that
Tune restarts from a checkpoint (PBT exploit, HyperBand resume) starts a fresh Train run from it.

Which trials. All trials are drawn up front (`sample_points`: the space's anchors first, no repeats,
seeded) and handed to Tune as points to evaluate, so `--seed` repeats a sweep whatever the scheduler.
Trials whose configs differ only in their phase boundaries share their phase-1 steps: those are
trained once, before the Tuner starts, and each such trial starts from the checkpoint at its own
phase-1 end (orchestrator.shared_prefix).

Stopping. When Tune stops or pauses a trial, the trainable's `cleanup` (the `StopTrainRunsFirst`
mixin) writes the Train run's stop file and waits for `trainer.fit()` to return: the worker loop
checks the file at every step and returns, and the Train controller then releases its workers'
placement group itself. Without that wait, ending the trial's actor would kill the controller first
and leave the placement group to Ray Train's cleaner, which fails when several Ray instances share a
machine; the next trials would then wait forever for CPUs.

Layout under the sweep's run dir:
  config.yaml, sweep.yaml      base config and sweep settings (read again by --resume)
  points.json                  every trial's sampled values, drawn up front
  prefixes.json, prefixes/     phase-1 prefixes shared by several trials, trained once
                               (orchestrator.shared_prefix)
  tune/                        the Tune experiment (trial results, Tune checkpoints, state)
  trials/<trial_id>/           metrics.jsonl, the trial's Train run(s) `run`, `run_1`, ...
  sweep_results.csv, best_config.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from orchestrator.config import Config, config_from_dict, get_dotted
from orchestrator.errors import UserError, root_cause
from orchestrator.trainer import STUDENT_DIR, PreparedRun

EVAL_METRIC = "eval/ppl"
MODE = "min"
# "fifo" runs every trial to the end (no early stopping): the baseline the benchmark compares against.
SCHEDULERS = ("asha", "hyperband", "pbt", "fifo")
# Tune shows the first reported metrics in its progress table: put the distillation columns there.
LEAD_COLUMNS = ("phase", EVAL_METRIC, "eval_train_ratio", "step")
CONFIG_PREFIX = "config/"
START_STEP = "start_step"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
SETTINGS_FILE = "sweep.yaml"
POINTS_FILE = "points.json"  # every trial's sampled values, drawn up front
# A trial driver only waits on queues; its TorchTrainer's workers ask for their own resources.
DRIVER_CPU = 0.01
QUEUE_POLL_S = 1.0
# How long a stopping trial waits for its Train run to wind down (the workers' next report).
TRAIN_STOP_TIMEOUT_S = 300.0
# Ray Data's read tasks need a CPU beside the training workers of every running trial.
DATA_HEADROOM_CPU = 1.0
# Config sections a trial may not change: data and models are prepared once for the whole sweep.
SHARED_KEYS = ("teacher", "student", "data.", "derive.", "scaling.")
# ASHA keeps the best 1/4 at each rung (Ray's default); rungs at ~1/16, ~1/4 and all of a run.
ASHA_REDUCTION = 4
HYPERBAND_REDUCTION = 3
PBT_QUANTILE = 0.25


@dataclass
class SweepSettings:
    """Everything besides the base config that defines a sweep; saved as sweep.yaml for --resume."""

    space: str = "curriculum"
    num_samples: int = 8
    scheduler: str = "asha"
    max_eval_train_ratio: float = 2.0
    ratio_grace_evals: int = 1
    seed: int = 0
    max_concurrent: int | None = None
    # Train a phase-1 prefix shared by several trials once (orchestrator.shared_prefix); ASHA and
    # FIFO only: PBT and HyperBand restart trials from Tune checkpoints.
    share_prefix: bool = True

    def validate(self) -> None:
        if (
            isinstance(self.num_samples, bool)
            or not isinstance(self.num_samples, int)
            or self.num_samples < 1
        ):
            raise UserError(f"--num-samples {self.num_samples!r}: must be an integer >= 1")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
        if not self.max_eval_train_ratio > 0:  # inf turns the ratio stopper off
            raise UserError(f"--max-eval-train-ratio {self.max_eval_train_ratio!r}: must be a number > 0")
        if self.ratio_grace_evals < 0:
            raise UserError(f"--ratio-grace-evals {self.ratio_grace_evals!r}: must be >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"--max-concurrent {self.max_concurrent!r}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def tune_checkpoints(self) -> bool:
        # ASHA only stops trials; HyperBand pauses them and PBT clones them: both need checkpoints.
        return self.scheduler in ("hyperband", "pbt")


# ---------------------------------------------------------------------------------------------
# Trial configs: sampled dotted keys applied to the base config.


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers return them) -> Python values, so configs dump to YAML."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def check_space(space: dict[str, Any], base: dict[str, Any]) -> None:
    """Every key must be a config key a trial may change on its own; raises UserError otherwise."""
    if not space:
        raise UserError("the search space is empty")
    for key in space:
        if key.startswith(SHARED_KEYS) or key in ("teacher", "student"):
            raise UserError(
                f"search space key {key!r}: data, models and scaling are shared by all trials of a sweep"
            )
        try:
            value = get_dotted(base, key)
        except (KeyError, TypeError):
            raise UserError(f"search space key {key!r} is not a config key") from None
        if isinstance(value, dict):
            raise UserError(f"search space key {key!r} names a config section, not a value")


def _point_key(point: dict[str, Any]) -> str:
    return repr(sorted(point.items()))


def sample_points(
    space: dict[str, Any], num_samples: int, seed: int, anchors: list[dict[str, Any]] | tuple = ()
) -> list[dict[str, Any]]:
    """The trials of a sweep, drawn up front by Tune's own variant generator (as the Tuner would).

    Each of `num_samples` draws yields one point per grid_search combination. `anchors` come first,
    each completed by sampling the keys it leaves out. Draws that repeat a point already taken are
    drawn again (discrete spaces are small: without this, 8 draws from the curriculum space would
    often repeat one), unless the space runs out of new points. Seeded, so `--seed` repeats a sweep
    exactly, whatever the scheduler does with numpy's generator afterwards.
    """
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    np.random.seed(seed)  # Tune's samplers and sample_from functions use numpy's global generator
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def draw(partial: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            sampled_params(spec["config"]) for _, spec in generate_variants({"config": {**space, **partial}})
        ]

    for anchor in list(anchors)[:num_samples]:
        for point in draw(anchor):
            seen.add(_point_key(point))
            points.append(point)
    draws, attempts = len(list(anchors)[:num_samples]), 0
    while draws < num_samples:
        attempts += 1
        batch = draw({})
        if any(_point_key(p) in seen for p in batch) and attempts < 50 * num_samples:
            continue
        seen.update(_point_key(p) for p in batch)
        points.extend(batch)
        draws += 1
    return points


def pinned_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The param space handed to the Tuner when every trial is a pinned point: each key a choice of
    the values its points hold. (A `sample_from` key overwritten by a point trips Tune's placeholder
    resolution; the real space still drives PBT's mutations.)"""
    from ray import tune

    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.items():
            if all(repr(value) != repr(v) for v in values.setdefault(key, [])):
                values[key].append(value)
    return {key: tune.choice(options) for key, options in values.items()}


def sampled_params(trial_config: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in trial_config.items()}


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for dotted, value in params.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = _plain(value)
    return data


def trial_config(base: dict[str, Any], params: dict[str, Any], tune_checkpoints: bool) -> Config:
    config = config_from_dict(apply_params(base, params))
    if tune_checkpoints:
        # PBT and HyperBand act on eval results and need a checkpoint from that very report.
        config.train.checkpoint_every = config.train.eval_every
        config.train.checkpoints_to_keep = max(2, config.train.checkpoints_to_keep)
    return config


def keep_phases_left(
    params: dict[str, Any], trained: dict[str, Any], step: int, max_steps: int
) -> dict[str, Any]:
    """Phase boundaries for a trial restarting from a checkpoint taken at `step` of `max_steps`.

    `trained` is the curriculum section the checkpoint was trained with. PBT may move boundaries
    only forward in time: a boundary the checkpoint has already crossed (its last trained step had
    progress >= the boundary) keeps its trained value, so the trial never goes back into a phase it
    has left; a boundary not crossed yet may move anywhere from the next step's progress on, never
    into the past. The result keeps phase1_end <= phase2_end.
    """
    keys = ("curriculum.phase1_end", "curriculum.phase2_end")
    if not any(k in params for k in keys) or not trained.get("enabled", True):
        return dict(params)
    last = (step - 1) / max_steps if step > 0 else -1.0
    upcoming = step / max_steps
    bounds = []
    for key, name in zip(keys, ("phase1_end", "phase2_end")):
        old = float(trained[name])
        proposed = float(params.get(key, old))
        bounds.append(old if old <= last else max(proposed, upcoming))
    p1, p2 = bounds[0], max(bounds[1], bounds[0])
    out = dict(params)
    out.update({keys[0]: round(p1, 6), keys[1]: round(p2, 6)})
    return out


# ---------------------------------------------------------------------------------------------
# The trial driver.


@dataclass
class TrialSetup:
    """What every trial driver needs, shipped once through the object store (`tune.with_parameters`)."""

    base: dict[str, Any]  # the resolved base config
    prepared: PreparedRun  # data prepared once on the sweep driver, absolute paths
    sweep_dir: str
    tune_checkpoints: bool
    # Trained phase-1 prefixes trials fork from (orchestrator.shared_prefix), by prefix key.
    prefixes: dict[str, Any] = dataclasses.field(default_factory=dict)


class TuneRelay(UserCallback):
    """Runs in the Train controller: hands each eval record (and its checkpoint path) to the driver,
    then waits until Tune has decided on it.

    The driver acknowledges a record once `ray.tune.report` returns, i.e. once the scheduler and the
    stoppers let the trial go on, and writes the step to the trial's decision file, which the
    workers wait for after each eval (workers.tune_decision): a trial that Tune stops or pauses at
    an eval trains no step past it. (Without any wait, Train ran a report or two ahead and stopped
    ASHA trials overran their rung by up to two evals; with this hold alone, by `train.log_every`.)
    Once the trial is stopping (its stop file exists) nothing is waited on, so the controller never
    blocks while its workers wind down.
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
    take the Train controller down with it before it removes its workers' placement group (Ray Train's
    own cleaner for that case needs the state API, which fails when several Ray instances share a
    machine). So `cleanup` first writes the stop file, which the worker loop checks at every step,
    and waits until `trainer.fit()` has returned: the workers leave at their next step and the
    controller releases their resources itself.
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

    from orchestrator.shared_prefix import fork_point, prefix_evals
    from orchestrator.telemetry import MetricsCallback
    from orchestrator.trainer import build_trainer
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
    runtime = {
        **setup.prepared.loop_config["runtime"],
        "run_dir": str(run_dir),
        "student_dir": str(trial_dir / STUDENT_DIR),
        "stop_file": str(stop_file),
        "decision_file": str(decision_file),
    }
    if start_checkpoint is not None:
        runtime["start_checkpoint"] = start_checkpoint
    prepared = PreparedRun({"config": config.to_dict(), "runtime": runtime}, setup.prepared.data_dir)

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


def _trial_name(trial) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------
# Schedulers, stopper and resources.


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
    from orchestrator.pbt import FinalResultPBT

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
    from orchestrator.stoppers import EvalTrainRatioStopper

    return EvalTrainRatioStopper(settings.max_eval_train_ratio, settings.ratio_grace_evals)


def max_concurrent_trials(resources: dict[str, float], config: Config, limit: int | None = None) -> int:
    """How many trials can run at once so every running trial's placement group fits.

    A trial holds DRIVER_CPU plus num_workers * cpus_per_worker (and num_workers GPUs); one CPU stays
    free for Ray Data's read tasks. Sizing from the cluster keeps trials from waiting forever on
    placement groups that cannot all be placed.
    """
    s = config.scaling
    per_trial = s.num_workers * s.cpus_per_worker + DRIVER_CPU
    cpus = float(resources.get("CPU", 0.0))
    fits = int((cpus - DATA_HEADROOM_CPU) // per_trial)
    if s.use_gpu:
        fits = min(fits, int(float(resources.get("GPU", 0.0)) // s.num_workers))
    if fits < 1:
        need = f"{per_trial + DATA_HEADROOM_CPU:g} CPUs" + (f" and {s.num_workers} GPUs" if s.use_gpu else "")
        raise UserError(
            f"one trial needs {need} (scaling.num_workers={s.num_workers}, "
            f"scaling.cpus_per_worker={s.cpus_per_worker:g}, plus Ray Data); the cluster has "
            f"{cpus:g} CPUs and {resources.get('GPU', 0):g} GPUs"
        )
    return fits if limit is None else max(1, min(fits, limit))


# ---------------------------------------------------------------------------------------------
# Running a sweep.


def concurrency_note(concurrent: int, settings: SweepSettings) -> str:
    """How many trials run at once, and what that means for ASHA's savings."""
    line = f"raydistill: {concurrent} trial{'s' if concurrent != 1 else ''} at a time on this cluster"
    if settings.scheduler == "asha" and concurrent == 1:
        # One at a time, async ASHA always finishes the first trial and promotes every trial that
        # leads the ones before it: the fixed part is amortised only over many trials (BENCHMARKS.md).
        line += (
            "; one at a time, ASHA finishes the first trial and every early leader, so it saves more"
            " with more trials (--num-samples 16 or more)"
        )
    return line


def init_sweep_dir(run_dir: Path, base: Config, settings: SweepSettings) -> None:
    """Create the sweep's run dir with config.yaml and sweep.yaml; refuse one holding another run."""
    import yaml

    from orchestrator.run_dir import CONFIG_FILE, prepare_run_dir

    if (run_dir / TUNE_DIR).exists() or (run_dir / POINTS_FILE).exists():
        raise UserError(
            f"{run_dir} already holds a sweep; continue it with `raydistill sweep --resume {run_dir}`"
        )
    if (run_dir / CONFIG_FILE).exists() and not (run_dir / SETTINGS_FILE).exists():
        raise UserError(f"{run_dir} holds a training run, not a sweep; use another --run-dir")
    prepare_run_dir(run_dir, base)
    (run_dir / SETTINGS_FILE).write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))


def load_sweep_dir(path: Path) -> tuple[Path, Config, SweepSettings]:
    """(run dir, base config, settings) of the sweep at `path` (its run dir or its tune/ dir)."""
    import yaml

    from orchestrator.config import load_config
    from orchestrator.run_dir import CONFIG_FILE

    run_dir = path.resolve()
    if run_dir.name == TUNE_DIR and (run_dir.parent / SETTINGS_FILE).exists():
        run_dir = run_dir.parent
    settings_file = run_dir / SETTINGS_FILE
    started = (run_dir / TUNE_DIR).is_dir() or (run_dir / POINTS_FILE).is_file()
    if not settings_file.is_file() or not started:
        raise UserError(f"--resume {path}: no sweep there (expected {SETTINGS_FILE} and {TUNE_DIR}/)")
    settings = SweepSettings.from_dict(yaml.safe_load(settings_file.read_text()) or {})
    return run_dir, load_config(run_dir / CONFIG_FILE), settings


def write_points(run_dir: Path, points: list[dict[str, Any]]) -> None:
    (run_dir / POINTS_FILE).write_text(json.dumps(points, indent=2))


def read_points(run_dir: Path) -> list[dict[str, Any]]:
    """The trials' values as drawn when the sweep started (--resume before Tune had started)."""
    path = run_dir / POINTS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _absolute(prepared: PreparedRun) -> PreparedRun:
    """Trial drivers run in Tune's trial directories: hand them absolute data paths."""
    loop_config = copy.deepcopy(prepared.loop_config)
    runtime = loop_config["runtime"]
    runtime["tokenizer"] = str(Path(runtime["tokenizer"]).resolve())
    return PreparedRun(loop_config, Path(prepared.data_dir).resolve())


def _trainable(setup: TrialSetup):
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_driver, setup=setup), {"cpu": DRIVER_CPU})


def run_sweep(
    base: Config,
    settings: SweepSettings,
    run_dir: Path,
    space: dict[str, Any] | None = None,
    resume: bool = False,
    points: list[dict[str, Any]] | None = None,
):
    """Run (or, with `resume`, continue) a sweep in `run_dir`; return the sweep_results summary.

    The trials' values are drawn up front (`sample_points`: the space's anchors first, no repeats) and
    handed to Tune as points to evaluate. `space` replaces the named space (tests); `points` pins the
    trials' values, one dict of dotted keys per trial (benchmarks comparing schedulers on the same
    trials)."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from orchestrator.ray_session import ensure_ray
    from orchestrator.shared_prefix import plan_prefixes, train_prefixes, write_table
    from orchestrator.sweep_results import summarize
    from orchestrator.trainer import prepare_run

    run_dir = run_dir.resolve()
    settings.validate()
    anchors: list[dict[str, Any]] = []
    if space is None:
        from search_spaces import get_anchors, get_space

        try:
            space, anchors = get_space(settings.space), get_anchors(settings.space)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    base_dict = base.to_dict()
    check_space(space, base_dict)

    if not resume:
        init_sweep_dir(run_dir, base, settings)
    prepared = _absolute(prepare_run(base, run_dir))
    ensure_ray(base.scaling.num_workers, base.scaling.cpus_per_worker, base.scaling.use_gpu)
    tune_dir = run_dir / TUNE_DIR
    restoring = resume and tune.Tuner.can_restore(str(tune_dir))
    concurrent = max_concurrent_trials(ray.cluster_resources(), base, settings.max_concurrent)
    if not restoring and settings.scheduler == "pbt" and concurrent < 2:
        # PBT's population is the trials alive together; Tune creates no more than can run.
        raise UserError(
            f"--scheduler pbt needs at least 2 trials running at once; this cluster fits {concurrent} "
            f"({ray.cluster_resources().get('CPU', 0):g} CPUs): use asha, or give Ray more CPUs"
        )
    if resume:
        points = read_points(run_dir)
    else:
        if points is None:
            points = sample_points(space, settings.num_samples, settings.seed, anchors)
        write_points(run_dir, points)
        if settings.share_prefix and not settings.tune_checkpoints:
            configs = [trial_config(base_dict, p, settings.tune_checkpoints) for p in points]
            write_table(run_dir, {run.key: run for run in plan_prefixes(configs)})
    # Before any trial starts (and again on --resume, for one that was interrupted).
    prefixes = train_prefixes(run_dir, prepared)
    setup = TrialSetup(base_dict, prepared, str(run_dir), settings.tune_checkpoints, prefixes)
    if restoring:
        tuner = tune.Tuner.restore(
            str(tune_dir), trainable=_trainable(setup), resume_unfinished=True, resume_errored=False
        )
    else:
        print(concurrency_note(concurrent, settings), flush=True)
        search = BasicVariantGenerator(points_to_evaluate=copy.deepcopy(points), max_concurrent=concurrent)
        tuner = tune.Tuner(
            _trainable(setup),
            param_space=pinned_space(points),
            tune_config=tune.TuneConfig(
                metric=EVAL_METRIC,
                mode=MODE,
                search_alg=search,
                scheduler=build_scheduler(settings.scheduler, base, space),
                num_samples=len(points),
                reuse_actors=False,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(run_dir),
                stop=build_stopper(settings),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    tuner.fit()
    return summarize(run_dir, base_dict, settings)
