"""`raydistill sweep`: search a named space with Ray Tune, each trial a `raydistill train` run.

  raydistill sweep --config PATH --space NAME [--num-samples N] [--scheduler asha|hyperband|pbt]
                   [--max-eval-train-ratio R] [--no-shared-prefix] [--run-dir DIR]
  raydistill sweep --resume DIR

Trials are ranked on eval/ppl; EvalTrainRatioStopper stops any trial whose eval/train loss ratio
goes above R (default 2.0). The run dir receives sweep_results.csv, best_config.yaml (a complete
config for `raydistill train`) and the Tune experiment (tune/), which --resume continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.commands.options import add_override_option, add_verbose_option
from orchestrator.errors import RunFailed, UserError
from orchestrator.sweep.layout import POINTS_FILE
from orchestrator.sweep.settings import SweepSettings

DEFAULT_NUM_SAMPLES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # No Ray imports here: the CLI builds every sub-command's parser on each start.
    parser.add_argument("--config", help="base YAML run config; each trial overrides the sampled keys")
    add_override_option(parser, "a base config key", "train.max_steps=300")
    parser.add_argument(
        "--space",
        default="curriculum",
        help="named search space: curriculum (default), feature_norm, temperature, full",
    )
    parser.add_argument(
        "--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, help=f"trials (default {DEFAULT_NUM_SAMPLES})"
    )
    parser.add_argument(
        "--scheduler",
        default="asha",
        help="trial scheduler on eval/ppl: asha (default), hyperband, pbt; fifo runs every trial to the end",
    )
    parser.add_argument(
        "--max-eval-train-ratio",
        type=float,
        default=2.0,
        help="stop a trial whose eval/train loss ratio exceeds this (default 2.0)",
    )
    parser.add_argument(
        "--ratio-grace-evals",
        type=int,
        default=1,
        help="evals per trial the ratio stopper never judges (default 1)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="cap on trials run at once (default: as many as the cluster's CPUs/GPUs fit)",
    )
    parser.add_argument(
        "--no-shared-prefix",
        dest="share_prefix",
        action="store_false",
        help="train every trial from step 0 (default with asha and fifo: trials that differ only in their "
        "phase boundaries train their common phase 1 once and start from its checkpoint at their own "
        "phase-1 end)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling the space (default 0)")
    parser.add_argument(
        "--run-dir", default=None, help="sweep directory (default runs/sweep-<config>-<space>)"
    )
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted sweep in DIR")
    add_verbose_option(parser)


def default_run_dir(config_path: str, space: str) -> Path:
    return Path("runs") / f"sweep-{Path(config_path).stem}-{space}"


def _settings(args: argparse.Namespace) -> SweepSettings:
    return SweepSettings(
        space=args.space,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        max_eval_train_ratio=args.max_eval_train_ratio,
        ratio_grace_evals=args.ratio_grace_evals,
        seed=args.seed,
        max_concurrent=args.max_concurrent,
        share_prefix=args.share_prefix,
    )


def resume_hint(run_dir: Path) -> str | None:
    """What to print when Ctrl-C lands before Tune took over (data, or the shared phase-1 prefix).

    Tune prints nothing then, but the drawn points are saved before the prefix trains, so
    `--resume` can start the sweep from there; before that there is nothing to resume."""
    if not (run_dir / POINTS_FILE).exists():
        return None
    return f"raydistill: interrupted; continue with: raydistill sweep --resume {run_dir}"


def run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.sweep.results import BEST_CONFIG, RESULTS_CSV, format_table
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.sweep_dir import load_sweep_dir
    from search_spaces import SPACES

    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise UserError("--resume continues a sweep with its own config; drop --config/--set")
        run_dir, base, settings = load_sweep_dir(Path(args.resume))
        print(f"raydistill: resuming the sweep in {run_dir}")
    else:
        if args.config is None:
            raise UserError("--config is required (or --resume DIR to continue a sweep)")
        if args.space not in SPACES:
            raise UserError(f"--space {args.space!r}: unknown search space; known: {', '.join(SPACES)}")
        settings = _settings(args)
        settings.validate()
        base = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config, args.space)
        print(
            f"raydistill: sweeping space '{settings.space}' with {settings.num_samples} trials "
            f"({settings.scheduler}, eval/train ratio limit {settings.max_eval_train_ratio:g}) in {run_dir}"
        )
    try:
        summary = run_sweep(base, settings, run_dir, resume=args.resume is not None, verbose=args.verbose)
    except KeyboardInterrupt:
        hint = resume_hint(run_dir)
        if hint is None:
            raise
        print(hint, flush=True)
        return 130
    print(format_table(summary))
    if summary.rows and all(r["stop_reason"] == "error" for r in summary.rows):
        raise RunFailed(f"every trial failed; see the errors above and {summary.run_dir / 'tune'}")
    print(f"raydistill: trials in {summary.run_dir / RESULTS_CSV}")
    if summary.best is not None:
        print(
            f"raydistill: best trial {summary.best['trial_id']} (eval ppl {summary.best['final_eval_ppl']:.4g}); "
            f"its config: {summary.run_dir / BEST_CONFIG}"
        )
    unfinished = [r for r in summary.rows if r["stop_reason"] in ("interrupted", "not_started")]
    if unfinished:
        print(
            f"raydistill: {len(unfinished)} trials unfinished; continue with: raydistill sweep --resume {summary.run_dir}"
        )
        return 130  # Tune stopped on an interrupt (Ctrl-C) and saved its state
    return 0
