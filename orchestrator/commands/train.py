"""`raydistill train --config PATH [--set k=v ...] [--run-dir DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands.options import add_override_option, add_verbose_option
from orchestrator.config import load_config
from orchestrator.train.run import print_health, run_training


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    add_override_option(parser, "a config key", "train.lr=3e-4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--run-dir", default=None, help="run directory (default runs/<config name>); reused to resume"
    )
    add_verbose_option(parser)


def default_run_dir(config_path: str) -> Path:
    return Path("runs") / Path(config_path).stem


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    student = run_training(config, run_dir, verbose=args.verbose)
    print(f"raydistill: student saved to {student} (load it with AutoModelForCausalLM.from_pretrained)")
    print_health(student.parent)
    return 0
