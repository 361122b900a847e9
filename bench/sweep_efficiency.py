"""Does early stopping pay for itself? The same N trials, run twice through `raydistill sweep`'s path:

  early  ASHA on eval/ppl + EvalTrainRatioStopper(2.0), as `raydistill sweep` runs by default
  full   every trial to train.max_steps (FIFO, no stopper)

Both sweeps get the same sampled values (drawn once, pinned with Tune's points_to_evaluate), so the
only difference is early stopping. Compared: total trial-steps (optimizer steps summed over trials,
from each trial's metrics.jsonl, so the steps a stopped trial runs before its workers leave count too)
and the best eval ppl found (the final eval ppl of the trial each sweep recommends in best_config.yaml,
and the lowest eval ppl seen anywhere). Target: early <= 40% of the steps for a best ppl within 3%.

    .venv/bin/python bench/sweep_efficiency.py                              # tiny models, ~30-60 min here
    .venv/bin/python bench/sweep_efficiency.py --config configs/demo.yaml \\
        --set teacher=runs/cache/teacher-<hash>/student --set scaling.num_workers=1 --num-samples 8

Writes bench/results/sweep_efficiency.json; the sweeps live under --run-dir (early/, full/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import load_config  # noqa: E402
from orchestrator.sweep import SweepSettings, run_sweep, sample_points  # noqa: E402
from search_spaces import get_space  # noqa: E402

# Tiny preset models on a stdlib slice, one worker per trial: long enough (12 evals) for the rungs
# to matter, short enough to run 2 x 8 trials on a 2-core machine.
DEFAULT_SET = [
    "scaling.num_workers=1",
    "train.max_steps=120",
    "train.warmup_steps=10",
    "train.log_every=10",
    "train.eval_every=10",
    "train.checkpoint_every=60",
]
TARGET_COMPUTE = 0.40
TARGET_PPL_GAP = 0.03


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        help=f"config overrides (default: {' '.join(DEFAULT_SET)})",
    )
    parser.add_argument("--space", default="curriculum")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-eval-train-ratio", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-sweep-efficiency"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep_efficiency.json"))
    return parser.parse_args(argv)


def summarise(summary, wall_s: float) -> dict:
    rows = summary.rows
    best = summary.best
    seen = [r["best_eval_ppl"] for r in rows if math.isfinite(r["best_eval_ppl"])]
    return {
        "trial_steps": int(sum(r["steps"] for r in rows)),
        "recommended_ppl": best["final_eval_ppl"] if best else math.nan,
        "recommended": {k: best[k] for k in summary.param_keys} if best else None,
        "lowest_ppl_seen": min(seen) if seen else math.nan,
        "stop_reasons": {
            reason: sum(r["stop_reason"] == reason for r in rows)
            for reason in {r["stop_reason"] for r in rows}
        },
        "wall_s": round(wall_s, 1),
        "trials": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = DEFAULT_SET if args.overrides is None else args.overrides
    base = load_config(args.config, overrides)
    space = get_space(args.space)
    points = sample_points(space, args.num_samples, args.seed)
    run_root = Path(args.run_dir)
    results = {}
    for name, settings in (
        (
            "early",
            SweepSettings(space=args.space, scheduler="asha", max_eval_train_ratio=args.max_eval_train_ratio),
        ),
        ("full", SweepSettings(space=args.space, scheduler="fifo", max_eval_train_ratio=math.inf)),
    ):
        run_dir = run_root / name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # this benchmark's own output from an earlier run
        settings.num_samples = args.num_samples
        settings.seed = args.seed
        print(f"== {name}: {args.num_samples} trials, scheduler {settings.scheduler}", flush=True)
        start = time.perf_counter()
        summary = run_sweep(base, settings, run_dir, space=space, points=points)
        results[name] = summarise(summary, time.perf_counter() - start)

    early, full = results["early"], results["full"]
    compute = early["trial_steps"] / full["trial_steps"]
    gap = early["recommended_ppl"] / full["recommended_ppl"] - 1.0
    report = {
        "config": args.config,
        "overrides": overrides,
        "space": args.space,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "max_steps": base.train.max_steps,
        "eval_every": base.train.eval_every,
        "max_eval_train_ratio": args.max_eval_train_ratio,
        "points": points,
        "compute_fraction": round(compute, 4),
        "recommended_ppl_gap": round(gap, 4),
        "meets_target": bool(compute <= TARGET_COMPUTE and gap <= TARGET_PPL_GAP),
        "target": {"compute_fraction_max": TARGET_COMPUTE, "ppl_gap_max": TARGET_PPL_GAP},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "early": early,
        "full": full,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")

    print()
    print(f"{'':<8}{'trial-steps':>12}{'recommended ppl':>17}{'lowest ppl':>12}{'wall s':>9}  stop reasons")
    for name in ("early", "full"):
        r = results[name]
        print(
            f"{name:<8}{r['trial_steps']:>12}{r['recommended_ppl']:>17.4g}{r['lowest_ppl_seen']:>12.4g}"
            f"{r['wall_s']:>9.0f}  {r['stop_reasons']}"
        )
    print(
        f"early / full: {compute:.1%} of the trial-steps, recommended ppl {gap:+.1%} "
        f"(target <= {TARGET_COMPUTE:.0%}, <= {TARGET_PPL_GAP:+.0%}): "
        f"{'met' if report['meets_target'] else 'NOT met'}"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
