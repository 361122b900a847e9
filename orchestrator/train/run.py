"""One training run to the end: data, the local Ray session, the TorchTrainer, the exported student,
then its report and health verdict."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Config
from orchestrator.errors import Interrupted, RunFailed
from orchestrator.train.interrupt import GracefulInterrupt


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def run_training(
    config: Config, run_dir: Path, echo: bool = True, faults: dict | None = None, verbose: bool = False
) -> Path:
    """Prepare data, run the TorchTrainer to the end, return the exported student's path.

    `faults` (tests only) is passed to workers.faults.FaultInjector; `verbose` leaves Ray's console as
    Ray sets it (workers/ray_console.py)."""
    from orchestrator.train.preflight import preflight
    from orchestrator.train.ray_checkpoints import unregistered_checkpoints
    from orchestrator.train.ray_session import ensure_ray
    from orchestrator.train.run_dir import check_run_dir, prepare_run_dir
    from orchestrator.train.telemetry import MetricsCallback, shows_phases
    from orchestrator.train.trainer import STUDENT_DIR, build_trainer, prepare_run
    from orchestrator.train.worker_failure import NoRetryOnUserError, WorkerInputError, failure_message

    run_dir = run_dir.resolve()
    preflight(config)  # reads small files only: a refused run writes nothing and starts no Ray
    check_run_dir(run_dir, config)
    scaling = config.scaling

    def start_ray() -> None:
        ensure_ray(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu, verbose=verbose)

    # Ray Data prepares a corpus, so Ray starts then, sized for this run's workers; reused data starts
    # none, and the checks below still come before Ray. Bad data is refused before the run dir is
    # written (the corrected command may reuse the same --run-dir).
    prepared = prepare_run(config, run_dir, verbose=verbose, start_ray=start_ray)
    resuming = prepare_run_dir(run_dir, config)
    if resuming:
        from orchestrator.train.checkpoint_check import check_checkpoints_fit

        check_checkpoints_fit(run_dir, prepared.loop_config)  # DeepSpeed would fail in a worker
    if faults:
        prepared = prepared.with_runtime(faults=faults)
    start_ray()
    if echo:
        verb = "resuming" if resuming else "starting"
        print(
            f"raydistill: {verb} run in {run_dir} ({_workers(config.scaling.num_workers)}, ZeRO-{config.deepspeed.zero_stage})"
        )
        for directory in unregistered_checkpoints(run_dir) if resuming else ():
            print(
                f"raydistill: ignoring {directory.name}: a checkpoint a crash cut short (Ray never "
                "registered it; safe to delete)"
            )
    callback = MetricsCallback(
        str(run_dir), debug_every=config.train.debug_every, echo=echo, phases=shows_phases(config)
    )
    with GracefulInterrupt(run_dir) as interrupt:
        prepared = prepared.with_runtime(interrupt_file=str(interrupt.request_file))
        trainer = build_trainer(config, run_dir, prepared, callbacks=[callback, NoRetryOnUserError()])
        try:
            result = interrupt.call(trainer.fit)
        except Exception as exc:  # Ray wraps worker errors: one line, the tracebacks in a log file
            user, message = failure_message(exc, run_dir)
            raise (WorkerInputError if user else TrainingFailed)(message) from exc
    if interrupt.requested and (step := checkpoint_step(result)) < config.train.max_steps:
        raise Interrupted(
            f"stopped by {interrupt.signal_name} at step {step}/{config.train.max_steps}, checkpoint saved in "
            f"{run_dir}; run the same command again to resume",
            interrupt.exit_code,
        )
    return run_dir / STUDENT_DIR


def checkpoint_step(result) -> int:
    """The step of the run's latest checkpoint (0 without one)."""
    from workers.checkpointing import read_state

    if result is None or result.checkpoint is None:
        return 0
    return int(read_state(result.checkpoint.path)["step"])


class TrainingFailed(RunFailed):
    pass


def print_health(run_dir: Path) -> None:
    """Write report.md / report.png and end the console output with the health verdict."""
    from orchestrator.report.health import health_verdict
    from orchestrator.report.write import write_report
    from orchestrator.train.telemetry import read_metrics

    md, png = write_report(run_dir)
    print(f"raydistill: report in {md} and {png}")
    print("health:")
    for name, passed, figure in health_verdict(read_metrics(run_dir)):
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {figure}")
