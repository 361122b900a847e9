"""Run a sweep: the Tuner around the trial driver (orchestrator.sweep.trial_driver), as many trials at
once as the cluster fits. Data is prepared once, on the sweep driver, before the Tuner starts; trials
share it. Trials whose configs differ only in their phase boundaries share their phase-1 steps: those
are trained once, before the Tuner starts, and each such trial starts from the checkpoint at its own
phase-1 end (orchestrator.sweep.shared_prefix).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import UserError
from orchestrator.sweep.layout import EVAL_METRIC, MODE, TUNE_DIR
from orchestrator.sweep.results import summarize
from orchestrator.sweep.schedulers import build_scheduler, build_stopper
from orchestrator.sweep.settings import SweepSettings
from orchestrator.sweep.shared_prefix import plan_prefixes, train_prefixes, write_table
from orchestrator.sweep.sweep_dir import init_sweep_dir, read_points, write_points
from orchestrator.sweep.trial_driver import DRIVER_CPU, TrialSetup, trial_driver
from orchestrator.sweep.trials import check_space, pinned_space, sample_points, trial_config
from orchestrator.train.trainer import PreparedRun

# Ray Data's read tasks need a CPU beside the training workers of every running trial.
DATA_HEADROOM_CPU = 1.0


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


def _absolute(prepared: PreparedRun) -> PreparedRun:
    """Trial drivers run in Tune's trial directories: hand them absolute data paths."""
    absolute = prepared.with_runtime(tokenizer=str(Path(prepared.runtime.tokenizer).resolve()))
    return dataclasses.replace(absolute, data_dir=Path(prepared.data_dir).resolve())


def _trial_name(trial) -> str:
    return trial.trial_id


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
    verbose: bool = False,
):
    """Run (or, with `resume`, continue) a sweep in `run_dir`; return the sweep_results summary.

    The trials' values are drawn up front (`sample_points`: the space's anchors first, no repeats) and
    handed to Tune as points to evaluate. `space` replaces the named space (tests); `points` pins the
    trials' values, one dict of dotted keys per trial (benchmarks comparing schedulers on the same
    trials). `verbose` leaves Ray's console as Ray sets it (workers/ray_console.py)."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from orchestrator.train.preflight import preflight
    from orchestrator.train.ray_session import ensure_ray
    from orchestrator.train.trainer import prepare_run

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

    preflight(base)  # reads small files only: a refused sweep writes no sweep dir
    if not resume:
        init_sweep_dir(run_dir, base, settings)
    scaling = base.scaling

    def start_ray() -> None:
        ensure_ray(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu, verbose=verbose)

    # Ray Data prepares a corpus on the sweep's own instance (started then, sized for the trials).
    prepared = _absolute(prepare_run(base, run_dir, verbose=verbose, start_ray=start_ray))
    start_ray()
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
