"""Does early stopping pay for itself? The same N trials, run twice through `raydistill sweep`'s path:

  early  ASHA on eval/ppl + EvalTrainRatioStopper(2.0), trials sharing a phase-1 prefix trained once,
         as `raydistill sweep` runs by default (--no-shared-prefix: ASHA and the stopper alone)
  full   every trial to train.max_steps from step 0 (FIFO, no stopper, no shared prefix)

With a preset teacher (random weights, as in configs/tiny.yaml) the benchmark first pre-trains it with
CE on the same data (`--teacher-steps`, cached in the run dir), so that distillation, and therefore the
curriculum, has something to transfer. Both sweeps get the same sampled values (drawn once, pinned with Tune's points_to_evaluate), so the
only differences are early stopping and prefix sharing. Compared: total trial-steps (optimizer steps
summed over trials, from each trial's metrics.jsonl, so the steps a stopped trial runs before its
workers leave count too; a shared prefix's steps count once, a forked trial's from its fork)
and the best eval ppl found (the final eval ppl of the trial each sweep recommends in best_config.yaml,
and the lowest eval ppl seen anywhere). Target: early <= 40% of the steps for a best ppl within 3%.

    .venv/bin/python bench/sweep_efficiency.py                              # tiny models, ~30-60 min here
    .venv/bin/python bench/sweep_efficiency.py --config configs/demo.yaml \\
        --set teacher=runs/cache/teacher-<hash>/student --set scaling.num_workers=1 --num-samples 8

    .venv/bin/python bench/sweep_efficiency.py --scheduler hyperband --reuse-full \\
        --out bench/results/sweep_efficiency_hyperband.json    # another early arm against the same full one
    .venv/bin/python bench/sweep_efficiency.py --num-samples 24 \\
        --full-from bench/results/sweep_efficiency.json        # new early arm, the recorded full arm

Writes bench/results/sweep_efficiency.json; the sweeps live under --run-dir (early/ or
early-<scheduler>/, full/).
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
from orchestrator.sweep.run import run_sweep  # noqa: E402
from orchestrator.sweep.settings import SweepSettings  # noqa: E402
from orchestrator.sweep.shared_prefix import prefix_steps, steps_saved  # noqa: E402
from orchestrator.sweep.trials import sample_points, trial_config  # noqa: E402
from search_spaces import get_anchors, get_space  # noqa: E402

# Tiny models on a stdlib slice, one worker per trial: long enough (16 evals) for ASHA's rungs to
# matter, short enough to run 2 x 12 trials on a 2-core machine.
DEFAULT_SET = [
    "scaling.num_workers=1",
    "train.max_steps=160",
    "train.warmup_steps=10",
    "train.log_every=5",
    "train.eval_every=10",
    "train.checkpoint_every=80",
]
TARGET_COMPUTE = 0.40
# Full-length reference points of the curriculum space.
REFERENCES = {
    "no_curriculum": {"curriculum.phase1_end": 0.0, "curriculum.phase2_end": 0.0},
    "seed_0.3_0.6": {"curriculum.phase1_end": 0.3, "curriculum.phase2_end": 0.6},
}
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
    parser.add_argument("--num-samples", type=int, default=12)
    parser.add_argument(
        "--teacher-steps",
        type=int,
        default=400,
        help="CE pre-training steps for a preset (random) teacher; 0 keeps it random",
    )
    parser.add_argument("--max-eval-train-ratio", type=float, default=2.0)
    parser.add_argument(
        "--scheduler",
        default="asha",
        choices=("asha", "hyperband"),
        help="the early-stopping arm's scheduler (default asha, as `raydistill sweep`)",
    )
    parser.add_argument(
        "--reuse-full",
        action="store_true",
        help="take the full arm from an earlier run in --run-dir (same config and points; trials are "
        "deterministic) instead of running it again",
    )
    parser.add_argument(
        "--full-from",
        default=None,
        metavar="JSON",
        help="take the full arm and the references from an earlier results JSON of this bench (same "
        "config, seed and points; trials are deterministic, which the early arm's completed trials "
        "check) instead of running them again",
    )
    parser.add_argument(
        "--reuse-early",
        action="store_true",
        help="take the early arm from an earlier run in --run-dir (to re-report it)",
    )
    parser.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="the early arm trains every trial from step 0 (ASHA and the stopper alone)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-sweep-efficiency"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep_efficiency.json"))
    return parser.parse_args(argv)


def summarise(summary, wall_s: float) -> dict:
    rows = summary.rows
    best = summary.best
    seen = [r["best_eval_ppl"] for r in rows if math.isfinite(r["best_eval_ppl"])]
    shared = prefix_steps(summary.run_dir)
    return {
        # A forked trial stopped on a replayed result (its last step before its fork) ran no steps.
        "trial_steps": int(sum(max(0, r["steps"] - r["start_step"]) for r in rows)) + shared,
        "shared_prefix_steps": shared,
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


def pretrained_teacher(base, steps: int, run_root: Path) -> str:
    """Pre-train the base config's preset teacher with CE on the same data; reuse an earlier one."""
    from orchestrator.config import config_from_dict
    from orchestrator.train.run import run_training

    data = base.to_dict()
    data.update(teacher="none", student=base.teacher)
    data["curriculum"]["enabled"] = False
    data["loss"].update(alpha_ce=1.0, alpha_kd=0.0, alpha_feature=0.0, alpha_attention=0.0)
    data["train"].update(
        max_steps=steps, warmup_steps=min(20, steps // 10), eval_every=steps, checkpoint_every=steps
    )
    student = run_root / "teacher" / "student"
    if not (student / "config.json").exists():
        print(f"== teacher: {base.teacher} pre-trained with CE for {steps} steps", flush=True)
        run_training(config_from_dict(data), run_root / "teacher", echo=False)
    return str(student.resolve())


def reused_arm(name: str, run_dir: Path, base, points: list[dict]) -> dict:
    """An arm of an earlier run of this bench, if it ran the same base config and points."""
    from orchestrator.sweep.results import summarize
    from orchestrator.sweep.sweep_dir import load_sweep_dir

    flag, run_dir = f"--reuse-{name}", run_dir.resolve()
    if not run_dir.is_dir():
        raise SystemExit(f"{flag}: no earlier {name} arm in {run_dir}")
    _, old_base, settings = load_sweep_dir(run_dir)
    if old_base.to_dict() != base.to_dict():
        raise SystemExit(f"{flag}: {run_dir} ran another base config")
    summary = summarize(run_dir, base.to_dict(), settings)
    ran = sorted(
        repr(sorted(r.items())) for r in ({k: row[k] for k in summary.param_keys} for row in summary.rows)
    )
    if ran != sorted(repr(sorted(p.items())) for p in points):
        raise SystemExit(f"{flag}: {run_dir} ran other points")
    print(f"== {name}: reusing {run_dir}", flush=True)
    return {**summarise(summary, math.nan), "reused_from": str(run_dir)}


def recorded_full_arm(path: Path, report_keys: dict, points: list[dict]) -> dict:
    """The full arm (and references) of an earlier results JSON, if it ran the same sweep with the
    same first points (more points may be asked for now: see `extended_full_arm`)."""
    recorded = json.loads(path.read_text())
    for key, value in report_keys.items():
        if recorded.get(key) != value:
            raise SystemExit(f"--full-from {path}: {key} differs ({recorded.get(key)!r} != {value!r})")
    known = recorded["points"]
    if known != json.loads(json.dumps(points))[: len(known)]:
        raise SystemExit(f"--full-from {path}: its points are not the first {len(known)} of these")
    print(f"== full: {len(known)} trials recorded in {path}", flush=True)
    return recorded


def extended_full_arm(recorded: dict, more: dict | None) -> dict:
    """The recorded full arm plus the full-length trials of the points it did not have (full-arm
    trials are independent of each other: FIFO, no stopper, every trial from step 0)."""
    from orchestrator.sweep.results import pick_best

    full = recorded["full"]
    if more is None:
        return full
    rows = full["trials"] + more["trials"]
    best = pick_best(rows)
    params = list(full["recommended"] or more["recommended"] or {})
    reasons = {
        k: full["stop_reasons"].get(k, 0) + more["stop_reasons"].get(k, 0)
        for k in {*full["stop_reasons"], *more["stop_reasons"]}
    }
    return {
        "trial_steps": full["trial_steps"] + more["trial_steps"],
        "shared_prefix_steps": 0,
        "recommended_ppl": best["final_eval_ppl"] if best else math.nan,
        "recommended": {k: best[k] for k in params} if best else None,
        "lowest_ppl_seen": min(full["lowest_ppl_seen"], more["lowest_ppl_seen"]),
        "stop_reasons": reasons,
        "wall_s": math.nan,
        "trials": rows,
    }


def without_teacher(overrides: list[str]) -> list[str]:
    """Overrides minus the pre-trained teacher's path, which names the run dir it was trained in."""
    return [o for o in overrides if not o.startswith("teacher=")]


def completed_ppl_differences(points: list[dict], early: dict, full: dict) -> list[float]:
    """Relative final-ppl differences between the arms for trials both ran to the end: 0 when the
    runs are deterministic, as they are here (a check on a reused full arm)."""
    full_rows = {_point_index(r, points): r for r in full["trials"]}
    return [
        abs(r["final_eval_ppl"] / full_rows[_point_index(r, points)]["final_eval_ppl"] - 1.0)
        for r in early["trials"]
        if r["stop_reason"] == "completed"
    ]


def trials_at_once(base) -> int:
    """How many trials `raydistill sweep` runs at once for this config on this machine's Ray."""
    import ray

    from orchestrator.sweep.run import max_concurrent_trials
    from orchestrator.train.ray_session import ensure_ray

    ensure_ray(base.scaling.num_workers, base.scaling.cpus_per_worker, base.scaling.use_gpu)
    return max_concurrent_trials(ray.cluster_resources(), base, None)


def _point_index(row: dict, points: list[dict]) -> int:
    return next(i for i, p in enumerate(points) if all(row.get(k) == v for k, v in p.items()))


def by_trial_count(base, points: list[dict], early: dict, full: dict, counts: list[int]) -> list[dict]:
    """What the same sweeps would have cost and found with only their first n trials.

    Exact, not a model, when trials run one at a time (as on this machine): Tune starts them in
    point order, async ASHA judges trial i against the trials before it only, the ratio stopper
    looks at each trial alone, and a trial forked from a shared prefix reports the results it
    would have reported from step 0. So the first n trials of an N-trial sweep are an n-trial
    sweep, except for the prefix, which is re-planned for the n trials (a trial alone in its group
    runs from step 0, and is charged its steps from 0). n = N repeats the measured figures.
    """
    from orchestrator.sweep.results import pick_best
    from orchestrator.sweep.shared_prefix import phase1_steps, plan_prefixes, prefix_key

    early_rows = sorted(early["trials"], key=lambda r: _point_index(r, points))
    full_rows = sorted(full["trials"], key=lambda r: _point_index(r, points))
    curve = []
    for n in counts:
        configs = [trial_config(base.to_dict(), p, False) for p in points[:n]]
        plans = {run.key: run for run in plan_prefixes(configs)}
        own = 0
        for config, row in zip(configs, early_rows[:n]):
            fork = phase1_steps(config) if prefix_key(config) in plans else 0
            own += max(0, row["steps"] - fork)  # a trial stopped on a replayed result runs none
        prefix = sum(run.steps for run in plans.values())
        full_steps = sum(r["steps"] - r["start_step"] for r in full_rows[:n])
        recommended, best = pick_best(early_rows[:n]), pick_best(full_rows[:n])
        curve.append(
            {
                "trials": n,
                "early_trial_steps": own + prefix,
                "shared_prefix_steps": prefix,
                "full_trial_steps": full_steps,
                "compute_fraction": round((own + prefix) / full_steps, 4),
                "recommended_ppl": recommended["final_eval_ppl"],
                "full_best_ppl": best["final_eval_ppl"],
                "recommended_ppl_gap": round(recommended["final_eval_ppl"] / best["final_eval_ppl"] - 1, 4),
            }
        )
    return curve


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = DEFAULT_SET if args.overrides is None else args.overrides
    base = load_config(args.config, overrides)
    run_root = Path(args.run_dir)
    pretrained = base.teacher.startswith("preset:") and args.teacher_steps > 0
    if pretrained:
        teacher = pretrained_teacher(base, args.teacher_steps, run_root)
        overrides = [*overrides, f"teacher={teacher}"]
        base = load_config(args.config, overrides)
    space = get_space(args.space)
    points = sample_points(space, args.num_samples, args.seed, get_anchors(args.space))
    recorded = None
    if args.full_from:
        same = {
            "space": args.space,
            "seed": args.seed,
            "max_steps": base.train.max_steps,
            "eval_every": base.train.eval_every,
            "teacher_pretrain_steps": args.teacher_steps if pretrained else 0,
        }
        recorded = recorded_full_arm(Path(args.full_from), same, points)
        if Path(recorded["config"]).name != Path(args.config).name:
            raise SystemExit(f"--full-from {args.full_from}: ran {recorded['config']}, not {args.config}")
        if without_teacher(recorded["overrides"]) != without_teacher(overrides):
            raise SystemExit(f"--full-from {args.full_from}: other config overrides")
    results = {}
    for name, settings in (
        (
            "early",
            SweepSettings(
                space=args.space,
                scheduler=args.scheduler,
                max_eval_train_ratio=args.max_eval_train_ratio,
                share_prefix=not args.no_shared_prefix,
            ),
        ),
        (
            "full",
            SweepSettings(
                space=args.space, scheduler="fifo", max_eval_train_ratio=math.inf, share_prefix=False
            ),
        ),
    ):
        # The early arm's dir names its scheduler when it is not the default, so both can sit side by side.
        run_dir = run_root / (
            name if name == "full" or args.scheduler == "asha" else f"{name}-{args.scheduler}"
        )
        if name == "full" and recorded is not None:
            missing = points[len(recorded["points"]) :]
            more = None
            if missing:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                settings.num_samples, settings.seed = len(missing), args.seed
                print(f"== full: the {len(missing)} trials not recorded, to the end", flush=True)
                more = summarise(run_sweep(base, settings, run_dir, space=space, points=missing), math.nan)
            results[name] = {**extended_full_arm(recorded, more), "reused_from": args.full_from}
            continue
        if (name == "full" and args.reuse_full) or (name == "early" and args.reuse_early):
            results[name] = reused_arm(name, run_dir, base, points)
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)  # this benchmark's own output from an earlier run
        settings.num_samples = args.num_samples
        settings.seed = args.seed
        print(f"== {name}: {args.num_samples} trials, scheduler {settings.scheduler}", flush=True)
        start = time.perf_counter()
        summary = run_sweep(base, settings, run_dir, space=space, points=points)
        results[name] = summarise(summary, time.perf_counter() - start)

    # Curriculum references at full length: no curriculum is the space's anchor (in the full sweep);
    # the seed's 0.3/0.6 gets its own run unless it was drawn.
    references = dict(recorded["references"]) if recorded is not None else {}
    for label, point in REFERENCES.items():
        if label in references or not set(point) <= set(space):
            continue
        rows = results["full"]["trials"]
        row = next((r for r in rows if all(r.get(k) == v for k, v in point.items())), None)
        if row is None:
            run_dir = run_root / f"reference-{label}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            fifo = SweepSettings(
                space=args.space, scheduler="fifo", max_eval_train_ratio=math.inf, num_samples=1
            )
            filled = {**points[0], **point}
            row = run_sweep(base, fifo, run_dir, space=space, points=[filled]).rows[0]
        references[label] = {"point": point, "final_eval_ppl": row["final_eval_ppl"]}

    early, full = results["early"], results["full"]
    compute = early["trial_steps"] / full["trial_steps"]
    # What prefix sharing alone saves: every trial to the end, each from its fork (exact: forks
    # resume exactly, so the trial-steps follow from the plan without running it).
    configs = [trial_config(base.to_dict(), p, False) for p in points]
    full_shared_steps = full["trial_steps"] - steps_saved(configs)
    gap = early["recommended_ppl"] / full["recommended_ppl"] - 1.0
    reproduced = completed_ppl_differences(points, early, full)
    counts = sorted({*range(8, args.num_samples, 4), args.num_samples})
    # The first-n figures are exact only when trials ran one at a time (see by_trial_count).
    one_at_a_time = trials_at_once(base) == 1
    curve = by_trial_count(base, points, early, full, counts) if one_at_a_time else []
    report = {
        "config": args.config,
        "teacher": base.teacher,
        "teacher_pretrain_steps": args.teacher_steps if pretrained else 0,
        "overrides": overrides,
        "space": args.space,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "max_steps": base.train.max_steps,
        "eval_every": base.train.eval_every,
        "max_eval_train_ratio": args.max_eval_train_ratio,
        "scheduler": args.scheduler,
        "points": points,
        "compute_fraction": round(compute, 4),
        "full_with_shared_prefix_steps": full_shared_steps,
        "shared_prefix_only_fraction": round(full_shared_steps / full["trial_steps"], 4),
        "recommended_ppl_gap": round(gap, 4),
        # Trials both arms ran to the end: their final ppl agree when the runs are deterministic.
        "completed_in_both_max_rel_diff": max(reproduced, default=math.nan),
        "meets_target": bool(compute <= TARGET_COMPUTE and gap <= TARGET_PPL_GAP),
        "target": {"compute_fraction_max": TARGET_COMPUTE, "ppl_gap_max": TARGET_PPL_GAP},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "references": references,
        "trials_at_once": 1 if one_at_a_time else "more than 1",
        "by_trial_count": curve,
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
    print(
        f"prefix sharing alone (every trial to the end, from its fork): {full_shared_steps} trial-steps, "
        f"{full_shared_steps / full['trial_steps']:.1%} of full"
    )
    if curve:
        print("\nthe same sweeps cut to their first n trials (exact one trial at a time):")
        print(f"{'trials':>7}{'early steps':>13}{'full steps':>12}{'compute':>9}{'ppl gap':>9}")
        for c in curve:
            print(
                f"{c['trials']:>7}{c['early_trial_steps']:>13}{c['full_trial_steps']:>12}"
                f"{c['compute_fraction']:>9.1%}{c['recommended_ppl_gap']:>+9.1%}"
            )
    print(
        f"trials both arms ran to the end: {len(reproduced)}, final ppl differ by at most "
        f"{max(reproduced, default=math.nan):.2e} (relative)"
    )
    for label, ref in references.items():
        print(f"reference {label}: final eval ppl {ref['final_eval_ppl']:.4g}")
    if early["recommended"]:
        print(f"early sweep's recommendation: {early['recommended']} at ppl {early['recommended_ppl']:.4g}")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
