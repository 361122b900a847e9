"""Does the curriculum pay? Same student, same data, same steps, five ways, through the product path.

    .venv/bin/python bench/quality.py                      # ~35-60 min on 2 CPU cores
    .venv/bin/python bench/quality.py --steps 100 --only a,e   # a quick look

Runs (each a real `run_training`: 2 Ray Train workers, DeepSpeed ZeRO-2, configs/demo.yaml + overrides):
  a  CE only: no teacher (`teacher: none`, alpha_ce 1)
  b  KD only: logits (alpha_ce 0.3, alpha_kd 0.7), no feature or attention parts
  c  every part on from the start (curriculum disabled)
  d  the seed's curriculum (phase1_end 0.3, phase2_end 0.6)
  e  the shipped default: configs/demo.yaml as it is
plus the teacher (the demo's cached pre-trained teacher, trained first if missing, or --teacher).

Every model's perplexity is measured on the driver the same way, on the same eval sequences (the whole
eval split by default) (`orchestrator.commands.demo.evaluate_perplexity`). Times: `wall_s` is the whole
`run_training` call (Ray Train start-up, data, training, checkpoints, export); `s_per_step` is the
training time per step from the run's own tokens/s, so `b - a` is the teacher's forward cost per step.
Writes bench/results/quality.json; run dirs live under runs/bench-quality/ and a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.cli import build_parser  # noqa: E402
from orchestrator.commands import demo  # noqa: E402
from orchestrator.config import Config, apply_overrides, config_from_dict, read_yaml  # noqa: E402
from orchestrator.report.health import mean_tokens_per_s  # noqa: E402
from orchestrator.train.telemetry import read_metrics  # noqa: E402

OFF = ["loss.alpha_feature=0", "loss.alpha_attention=0"]
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    # letter: (json key, label, overrides on configs/demo.yaml)
    "a": (
        "ce_only",
        "a  CE only (no teacher)",
        ["teacher=none", "loss.alpha_ce=1.0", "loss.alpha_kd=0", *OFF, "curriculum.enabled=false"],
    ),
    "b": ("kd_only", "b  KD only (logits)", [*OFF, "curriculum.enabled=false"]),
    "c": ("distill", "c  every part from the start", ["curriculum.enabled=false"]),
    "d": (
        "seed_curriculum",
        "d  seed curriculum 0.3/0.6",
        ["curriculum.enabled=true", "curriculum.phase1_end=0.3", "curriculum.phase2_end=0.6"],
    ),
    "e": ("curriculum", "e  shipped default (demo.yaml)", []),
}
RESULT_FILE = "bench_result.json"


def build_config(teacher: str, overrides: list[str], steps: int, config_path: Path) -> Config:
    data = apply_overrides(read_yaml(config_path), [*overrides, f"train.max_steps={steps}"])
    if data.get("teacher") != "none":
        data["teacher"] = teacher  # a path: not parsed as YAML
    return config_from_dict(data)


def run_variant(name: str, config: Config, run_root: Path, data_dir: Path, eval_sequences: int) -> dict:
    from orchestrator.train.run import run_training

    run_dir = (run_root / name).resolve()
    done = run_dir / RESULT_FILE
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("config") == config.to_dict() and saved.get("eval_sequences") == eval_sequences:
            print(f"== {name}: reusing {run_dir}", flush=True)
            return saved
        raise SystemExit(f"{run_dir} holds another run; delete it or use --run-root")
    print(f"\n== {name}: {run_dir}", flush=True)
    started = time.perf_counter()
    student_dir = run_training(config, run_dir)
    wall_s = time.perf_counter() - started
    records = read_metrics(run_dir)
    tokens_per_s = mean_tokens_per_s(records)
    tokens_per_step = config.train.micro_batch_size * config.train.grad_accum * config.scaling.num_workers
    tokens_per_step *= config.data.seq_len
    evaluated = demo.evaluate_perplexity(student_dir, data_dir, eval_sequences)
    result = {
        "ppl": evaluated["ppl"],
        "params": evaluated["params"],
        "wall_s": wall_s,
        "s_per_step": tokens_per_step / tokens_per_s if tokens_per_s else None,
        "tokens_per_s": tokens_per_s,
        "in_run_eval_ppl": next((r["eval/ppl"] for r in reversed(records) if "eval/ppl" in r), None),
        "steps": records[-1]["step"] if records else 0,
        "eval_sequences": eval_sequences,
        "loadavg_after": os.getloadavg()[0],
        "config": config.to_dict(),
    }
    done.write_text(json.dumps(result, indent=2) + "\n")
    print(f"== {name}: eval ppl {result['ppl']:.2f}, {wall_s:.0f} s", flush=True)
    return result


def teacher_figures(teacher_dir: Path, data_dir: Path, eval_sequences: int) -> dict:
    evaluated = demo.evaluate_perplexity(teacher_dir, data_dir, eval_sequences)
    figures = {"ppl": evaluated["ppl"], "params": evaluated["params"]}
    records = read_metrics(teacher_dir.parent)  # the pre-training run, when it is the demo's cached one
    if records:
        rate = mean_tokens_per_s(records)
        cfg = yaml.safe_load((teacher_dir.parent / "config.yaml").read_text())
        tokens_per_step = (
            cfg["train"]["micro_batch_size"] * cfg["scaling"]["num_workers"] * cfg["data"]["seq_len"]
        )
        figures.update(
            {
                "train_steps": records[-1]["step"],
                "train_s_per_step": tokens_per_step / rate if rate else None,
                "train_in_run_eval_ppl": next(
                    (r["eval/ppl"] for r in reversed(records) if "eval/ppl" in r), None
                ),
            }
        )
    return figures


def step_costs(teacher: str, student: str, data_dir: Path, micro_batch: int, repeats: int = 5) -> dict:
    """CPU seconds, on one thread as each worker has, of one worker's share of a step: the frozen
    teacher's forward and the student's CE train step (forward, backward, AdamW) on one micro-batch.
    CPU time, unlike wall time, does not grow when other processes share the cores."""
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.data.shards import read_split
    from orchestrator.train.trainer import PRESET_MAX_POSITIONS
    from workers.models import build_model, load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = torch.as_tensor(read_split(data_dir / "train")[:micro_batch]).long()  # (B, T)
        frozen = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
        tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
        model = build_model(student, tokenizer, PRESET_MAX_POSITIONS, 0, torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def teacher_forward() -> None:
            with torch.no_grad():
                frozen(input_ids=ids)

        def student_step() -> None:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        def cpu_seconds(fn) -> float:
            fn()  # warm-up
            started = time.process_time()
            for _ in range(repeats):
                fn()
            return (time.process_time() - started) / repeats

        return {
            "micro_batch": micro_batch,
            "teacher_forward_cpu_s": cpu_seconds(teacher_forward),
            "student_ce_step_cpu_s": cpu_seconds(student_step),
        }
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="student steps for every run (default: the config's train.max_steps)",
    )
    parser.add_argument("--teacher", default=None, help="teacher path (default: the demo's cached teacher)")
    parser.add_argument(
        "--config", default=str(demo.DEMO_CONFIG), help="base config (default configs/demo.yaml)"
    )
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="another candidate run, e.g. --extra 'p0_0.2:curriculum.phase1_end=0,curriculum.phase2_end=0.2'",
    )
    parser.add_argument(
        "--eval-sequences",
        type=int,
        default=0,
        help="evenly spaced eval sequences (default 0 = the whole split)",
    )
    parser.add_argument("--run-root", default="runs/bench-quality")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    args = parser.parse_args(argv)
    if args.steps is None:
        # Row (e) is the shipped config as it is: its own number of steps for every run.
        args.steps = int(config_from_dict(read_yaml(Path(args.config))).train.max_steps)

    started = time.perf_counter()
    load_before = os.getloadavg()
    demo_args = build_parser().parse_args(["demo", "--config", args.config])
    if args.teacher is None:
        base = demo.distill_config(demo_args)
        teacher_dir, _ = demo.ensure_teacher(demo_args, base)
    else:
        teacher_dir = Path(args.teacher)
    teacher = str(teacher_dir.resolve()) if teacher_dir.exists() else str(teacher_dir)

    from orchestrator.train.trainer import prepare_run

    run_root = Path(args.run_root)
    config_path = Path(args.config)
    # One eval set for every model: the teacher-tokenised split the distillation runs read.
    reference = build_config(teacher, [], args.steps, config_path)
    data_dir = prepare_run(reference, run_root / "_data_probe").data_dir

    results: dict[str, dict] = {}
    wanted = [v.strip() for v in args.only.split(",") if v.strip()]
    for letter in wanted:
        if letter not in VARIANTS:
            raise SystemExit(f"--only: unknown run {letter!r} (known: {', '.join(VARIANTS)})")
        key, _, overrides = VARIANTS[letter]
        config = build_config(teacher, overrides, args.steps, config_path)
        results[letter] = run_variant(
            f"{letter}-{key}-{args.steps}", config, run_root, data_dir, args.eval_sequences
        )
    extras: dict[str, dict] = {}
    for spec in args.extra:
        name, _, rest = spec.partition(":")
        overrides = [item for item in rest.split(",") if item]
        config = build_config(teacher, overrides, args.steps, config_path)
        extras[name] = {
            **run_variant(f"x-{name}-{args.steps}", config, run_root, data_dir, args.eval_sequences),
            "overrides": overrides,
        }

    print("\n== teacher: evaluating", flush=True)
    t = teacher_figures(Path(teacher), data_dir, args.eval_sequences)
    costs = step_costs(teacher, reference.student, data_dir, reference.train.micro_batch_size)

    out: dict = {
        "command": "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps,
        "eval_sequences": args.eval_sequences,
        "teacher": teacher,
        "teacher_ppl": t["ppl"],
        "teacher_params": t["params"],
        "teacher_train_steps": t.get("train_steps"),
        "teacher_train_s_per_step": t.get("train_s_per_step"),
    }
    for letter, result in results.items():
        key = VARIANTS[letter][0]
        out[f"{key}_ppl"] = result["ppl"]
        out[f"{key}_wall_s"] = result["wall_s"]
        out[f"{key}_s_per_step"] = result["s_per_step"]
    if "a" in results and "b" in results and results["a"]["s_per_step"] and results["b"]["s_per_step"]:
        out["teacher_forward_s_per_step"] = results["b"]["s_per_step"] - results["a"]["s_per_step"]
    if "a" in results and "e" in results:
        out["curriculum_vs_ce_only"] = results["e"]["ppl"] / results["a"]["ppl"] - 1
    out.update(costs)
    out["student_params"] = next((r["params"] for r in results.values()), None)
    out["runs"] = {
        VARIANTS[k][0]: {kk: vv for kk, vv in v.items() if kk != "config"} for k, v in results.items()
    }
    out["extra"] = {k: {kk: vv for kk, vv in v.items() if kk != "config"} for k, v in extras.items()}
    out["loadavg_before"] = load_before[0]
    out["loadavg_after"] = os.getloadavg()[0]
    out["bench_wall_s"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print_table(out, results, extras, t)
    print(f"\nwritten: {args.out}")
    return 0


def print_table(out: dict, results: dict, extras: dict, teacher: dict) -> None:
    base = results.get("a", {}).get("ppl")
    print(f"\n{'run':<36} {'params':>8} {'eval ppl':>9} {'vs CE':>7} {'wall s':>7} {'s/step':>7}")
    t_step = teacher.get("train_s_per_step")
    print(
        f"{'teacher (pre-trained, CE)':<36} {teacher['params'] / 1e6:>7.2f}M {teacher['ppl']:>9.2f} {'':>7} {'':>7} "
        f"{t_step if t_step is None else f'{t_step:.3f}':>7}"
    )
    rows = [(VARIANTS[k][1], v) for k, v in results.items()] + [(f"x  {k}", v) for k, v in extras.items()]
    for label, r in rows:
        vs = f"{100 * (r['ppl'] / base - 1):+.1f}%" if base else ""
        step = f"{r['s_per_step']:.3f}" if r.get("s_per_step") else "n/a"
        print(
            f"{label:<36} {r['params'] / 1e6:>7.2f}M {r['ppl']:>9.2f} {vs:>7} {r['wall_s']:>7.0f} {step:>7}"
        )
    if "teacher_forward_s_per_step" in out:
        print(f"teacher forward cost per step, wall (b - a): {out['teacher_forward_s_per_step']:.3f} s")
    print(
        f"per worker and micro-batch of {out['micro_batch']}, CPU seconds on one thread: teacher forward "
        f"{out['teacher_forward_cpu_s']:.3f} s, student CE step {out['student_ce_step_cpu_s']:.3f} s"
    )
    print(
        f"machine load average: {out['loadavg_before']:.1f} before, {out['loadavg_after']:.1f} after (2 cores)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
