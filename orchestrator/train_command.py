"""`raydistill train --config PATH [--set k=v ...] [--run-dir DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.config import Config, load_config
from orchestrator.errors import Interrupted, RunFailed, root_cause
from orchestrator.interrupt import GracefulInterrupt


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--run-dir", default=None, help="run directory (default runs/<config name>); reused to resume"
    )


def default_run_dir(config_path: str) -> Path:
    return Path("runs") / Path(config_path).stem


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def run_training(config: Config, run_dir: Path, echo: bool = True, faults: dict | None = None) -> Path:
    """Prepare data, run the TorchTrainer to the end, return the exported student's path.

    `faults` (tests only) is passed to workers.faults.FaultInjector."""
    from orchestrator.ray_session import ensure_ray
    from orchestrator.run_dir import prepare_run_dir
    from orchestrator.telemetry import MetricsCallback
    from orchestrator.trainer import STUDENT_DIR, build_trainer, prepare_run

    run_dir = run_dir.resolve()
    resuming = prepare_run_dir(run_dir, config)
    prepared = prepare_run(config, run_dir)
    if faults:
        prepared.loop_config["runtime"]["faults"] = faults
    ensure_ray(config.scaling.num_workers, config.scaling.cpus_per_worker, config.scaling.use_gpu)
    if echo:
        verb = "resuming" if resuming else "starting"
        print(
            f"raydistill: {verb} run in {run_dir} ({_workers(config.scaling.num_workers)}, ZeRO-{config.deepspeed.zero_stage})"
        )
    callback = MetricsCallback(str(run_dir), debug_every=config.train.debug_every, echo=echo)
    with GracefulInterrupt(run_dir) as interrupt:
        prepared.loop_config["runtime"]["interrupt_file"] = str(interrupt.request_file)
        trainer = build_trainer(config, run_dir, prepared, callbacks=[callback])
        try:
            result = interrupt.call(trainer.fit)
        except Exception as exc:  # Ray wraps worker errors; show the root cause in one line
            raise TrainingFailed(f"training failed: {root_cause(exc)}") from exc
    step = checkpoint_step(result)
    if interrupt.requested and step < config.train.max_steps:
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


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    student = run_training(config, run_dir)
    print(f"raydistill: student saved to {student} (load it with AutoModelForCausalLM.from_pretrained)")
    print_health(student.parent)
    return 0


def print_health(run_dir: Path) -> None:
    """Write report.md / report.png and end the console output with the health verdict."""
    from orchestrator.report import health_verdict, write_report
    from orchestrator.telemetry import read_metrics

    md, png = write_report(run_dir)
    print(f"raydistill: report in {md} and {png}")
    print("health:")
    for name, passed, figure in health_verdict(read_metrics(run_dir)):
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {figure}")
