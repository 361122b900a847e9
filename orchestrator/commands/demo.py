"""`raydistill demo`: the end-to-end job `make demo` runs, with no arguments needed.

    raydistill demo                                        # stdlib data, cached teacher, ~3.7x smaller student
    raydistill demo --teacher Qwen/Qwen2.5-0.5B --student derived --set derive.num_layers=8

Stages, each announced on the console:
1. data: the demo config's `data` section (the Python standard library by default) is tokenised
   into Parquet shards, cached under `<cache-dir>/data/<hash>` (`prepare_data.ensure_prepared`);
2. teacher: `--teacher` (Hugging Face id or path), or else `configs/teacher.yaml` pre-trained on that
   same data with `teacher: none` (CE only) and cached in `<cache-dir>/teacher-<hash>`, where the hash
   covers the resolved teacher config and the data's content and tokenizer; a cache dir whose
   `student/` exists is reused, an interrupted one resumes from its last checkpoint;
3. distillation: `configs/demo.yaml` (curriculum, 2 Ray Train workers, DeepSpeed ZeRO-2) via the
   same `run_training` path as `raydistill train`;
4. report: teacher and student perplexity measured the same way on the same eval sequences, then
   `<run-dir>/summary.json`, `report.md` and `report.png` (`orchestrator.report.write`), and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from orchestrator.commands.options import add_override_option, add_verbose_option
from orchestrator.config import Config, apply_overrides, config_from_dict, read_yaml
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
TEACHER_CONFIG = ROOT / "configs" / "teacher.yaml"
DEFAULT_RUN_DIR = Path("runs") / "demo"
DEFAULT_CACHE_DIR = Path("runs") / "cache"
SUMMARY_FILE = "summary.json"
EVAL_SEQUENCES = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher: Hugging Face id or local path (default: pre-train configs/teacher.yaml once and cache it)",
    )
    parser.add_argument(
        "--student",
        default=None,
        help="student: Hugging Face id, path, preset:<name> or 'derived' (default: the demo config's)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help=f"run directory (default {DEFAULT_RUN_DIR}, or a timestamped runs/demo-* if that holds another run)",
    )
    add_override_option(parser, "a key of the distillation config", "train.max_steps=300")
    parser.add_argument(
        "--config", default=str(DEMO_CONFIG), help="distillation config (default configs/demo.yaml)"
    )
    parser.add_argument(
        "--teacher-config",
        default=str(TEACHER_CONFIG),
        help="config that pre-trains the teacher when no --teacher is given (default configs/teacher.yaml); "
        "its data section is replaced by the distillation config's",
    )
    add_override_option(
        parser,
        "a key of the teacher pre-training config",
        "train.max_steps=300",
        flag="--teacher-set",
        dest="teacher_overrides",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help=f"where prepared data and pre-trained teachers are cached (default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--eval-sequences",
        type=int,
        default=EVAL_SEQUENCES,
        help="evenly spaced eval-split sequences the teacher and student perplexities are measured on "
        f"(default {EVAL_SEQUENCES}; 0 = all)",
    )
    add_verbose_option(parser)


# ---------------------------------------------------------------------------------------------
# Configs.


def _config_dict(path: str | Path, overrides: list[str], cache_dir: Path) -> dict[str, Any]:
    # The cache dir comes first so an explicit --set data.cache_dir=... still wins.
    return apply_overrides(read_yaml(path), [f"data.cache_dir={cache_dir / 'data'}", *overrides])


def distill_config(args: argparse.Namespace, teacher: str | None = None) -> Config:
    """The demo config <- --set overrides <- --teacher/--student (model names are not YAML-parsed)."""
    data = _config_dict(args.config, args.overrides, Path(args.cache_dir))
    if args.student is not None:
        data["student"] = args.student
    if teacher is not None:
        data["teacher"] = teacher
    elif args.teacher is not None:
        data["teacher"] = args.teacher
    return config_from_dict(data)


def teacher_config(args: argparse.Namespace, distill: Config) -> Config:
    """The teacher pre-training config, trained on exactly the distillation run's data."""
    data = _config_dict(args.teacher_config, args.teacher_overrides, Path(args.cache_dir))
    config = config_from_dict(data)
    if config.teacher != "none":
        raise UserError(
            f"{args.teacher_config}: teacher must be 'none' to pre-train a teacher (got {config.teacher!r})"
        )
    return dataclasses.replace(config, data=dataclasses.replace(distill.data, tokenizer=None))


def teacher_cache_key(config: Config, manifest: dict[str, Any]) -> str:
    """Hash of what determines the trained teacher: its resolved config (minus knobs that only change
    logging and checkpoint cadence) and the prepared data's content and tokenizer."""
    from orchestrator.dotted import flatten
    from orchestrator.train.run_dir import RESUMABLE_CHANGES

    settings = {k: v for k, v in flatten(config.to_dict()).items() if k not in RESUMABLE_CHANGES}
    settings["data.corpus_hash"] = manifest.get("corpus_hash")
    settings["data.tokenizer_hash"] = manifest.get("tokenizer_hash")
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def choose_run_dir(requested: str | None, config: Config) -> Path:
    """`--run-dir` as given; else runs/demo, or runs/demo-<timestamp> when runs/demo holds another run."""
    import yaml

    from orchestrator.train.run_dir import CONFIG_FILE, incompatible_keys

    if requested is not None:
        return Path(requested)
    run_dir = DEFAULT_RUN_DIR
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return run_dir
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        try:
            old = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            old = None
        if isinstance(old, dict) and not incompatible_keys(old, config.to_dict()):
            return run_dir  # the same demo: resume it (or just rebuild its report)
    return run_dir.with_name(f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")


# ---------------------------------------------------------------------------------------------
# Perplexity, measured on the driver the same way for the teacher and the student.


def evaluate_perplexity(
    model_path: str | Path, data_dir: str | Path, max_sequences: int = EVAL_SEQUENCES, batch_size: int = 16
) -> dict[str, Any]:
    """Token-level perplexity of a causal LM on `max_sequences` evenly spaced sequences of the eval
    split (all of them when it holds fewer, or when `max_sequences` is 0). Evenly spaced, not the
    first ones: the split is packed document by document, and its first documents are not typical
    (on the stdlib, a codec module's mapping table, which any model predicts easily).

    Returns {"ppl", "ce", "tokens", "sequences", "params", "seconds"}.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.data.shards import read_split

    started = time.perf_counter()
    sequences = read_split(Path(data_dir) / "eval")  # (N, T) int32
    if 0 < max_sequences < len(sequences):
        sequences = sequences[np.linspace(0, len(sequences) - 1, max_sequences).round().astype(int)]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model would break up the summary
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            ids = torch.as_tensor(sequences[start : start + batch_size]).long()  # (B, T)
            logits = model(input_ids=ids).logits[:, :-1].float()  # (B, T-1, V): predicts tokens 1..T-1
            targets = ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )  # (B*(T-1), V) against (B*(T-1),)
            total_nll += float(nll)
            total_tokens += targets.numel()
    ce = total_nll / max(total_tokens, 1)
    return {
        "ppl": math.exp(ce),
        "ce": ce,
        "tokens": total_tokens,
        "sequences": len(sequences),
        "params": params,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------
# Stages.


def _stage(number: int, text: str) -> None:
    print(f"\n==> [{number}/4] {text}", flush=True)


def ensure_teacher(args: argparse.Namespace, distill: Config) -> tuple[Path, float | None]:
    """The cached pre-trained teacher (trained now if missing). Returns (model dir, training seconds
    or None when reused)."""
    from orchestrator.data.prepare import ensure_prepared, read_manifest
    from orchestrator.train.run import run_training
    from orchestrator.train.trainer import PRESET_MAX_POSITIONS, STUDENT_DIR

    config = teacher_config(args, distill)
    data_dir = ensure_prepared(config.data, max_positions=PRESET_MAX_POSITIONS)
    key = teacher_cache_key(config, read_manifest(data_dir))
    run_dir = (Path(args.cache_dir) / f"teacher-{key}").resolve()
    model_dir = run_dir / STUDENT_DIR
    _stage(2, f"teacher: {config.student}, CE only, {config.train.max_steps} steps ({args.teacher_config})")
    if (model_dir / "config.json").is_file():
        print(f"reusing the pre-trained teacher in {model_dir}", flush=True)
        return model_dir, None
    print(f"pre-training the teacher into {run_dir} (cached: the next demo reuses it)", flush=True)
    started = time.perf_counter()
    run_training(config, run_dir, verbose=args.verbose)
    return model_dir, time.perf_counter() - started


def build_summary(
    distill: Config,
    run_dir: Path,
    teacher_eval: dict[str, Any] | None,
    student_eval: dict[str, Any],
    wall_s: float,
    timings: dict[str, float | None],
) -> dict[str, Any]:
    from orchestrator.report.health import health_verdict, mean_tokens_per_s
    from orchestrator.train.telemetry import read_metrics

    records = read_metrics(run_dir)
    last = records[-1] if records else {}
    evals = [r for r in records if "eval/ppl" in r]
    teacher_params = teacher_eval["params"] if teacher_eval else last.get("teacher_params")
    return {
        "teacher_ppl": teacher_eval["ppl"] if teacher_eval else None,
        "student_ppl": student_eval["ppl"],
        "teacher_params": teacher_params,
        "student_params": student_eval["params"],
        "tokens_per_s": mean_tokens_per_s(records),
        "wall_s": wall_s,
        "teacher": distill.teacher,
        "student": distill.student,
        "run_dir": str(run_dir),
        "steps": last.get("step"),
        "eval_sequences": student_eval["sequences"],
        "eval_tokens": student_eval["tokens"],
        "in_run_eval_ppl": evals[-1]["eval/ppl"] if evals else None,
        **timings,
        "health": [{"check": n, "passed": ok, "figure": f} for n, ok, f in health_verdict(records)],
    }


def run(args: argparse.Namespace) -> int:
    from orchestrator.data.prepare import ensure_prepared
    from orchestrator.report.health import verdict_lines
    from orchestrator.report.markdown import summary_table
    from orchestrator.report.write import write_report
    from orchestrator.train.run import run_training
    from orchestrator.train.trainer import PRESET_MAX_POSITIONS, prepare_run
    from workers.presets import preset_name

    if args.eval_sequences < 0:
        raise UserError(f"--eval-sequences={args.eval_sequences}: must be >= 0 (0 = the whole eval split)")
    started = time.perf_counter()
    distill = distill_config(args)  # refuses a bad --set before anything runs
    timings: dict[str, float | None] = {"teacher_train_s": None}

    if args.teacher is None:
        _stage(
            1,
            f"data: {distill.data.source} (vocab {distill.data.vocab_size}, seq_len {distill.data.seq_len})",
        )
        ensure_prepared(dataclasses.replace(distill.data, tokenizer=None), max_positions=PRESET_MAX_POSITIONS)
        teacher_dir, timings["teacher_train_s"] = ensure_teacher(args, distill)
        distill = distill_config(args, teacher=str(teacher_dir))
    else:
        _stage(1, f"data: {distill.data.source}, tokenised with the teacher's tokenizer")
        _stage(2, f"teacher: {args.teacher} (given)")

    run_dir = choose_run_dir(args.run_dir, distill).resolve()
    _stage(
        3,
        f"distillation: {distill.teacher} -> {distill.student}, {distill.train.max_steps} steps, into {run_dir}",
    )
    distill_started = time.perf_counter()
    student_dir = run_training(distill, run_dir, verbose=args.verbose)
    timings["distill_s"] = time.perf_counter() - distill_started

    _stage(4, f"report: perplexity on {args.eval_sequences} eval sequences, summary, plots")
    # The run's own prepared data (reused, not rebuilt); run_training already printed its notes.
    data_dir = prepare_run(distill, run_dir, announce=False).data_dir
    teacher_eval = None
    if preset_name(distill.teacher) is None:
        teacher_eval = evaluate_perplexity(distill.teacher, data_dir, args.eval_sequences)
        print(f"teacher: eval ppl {teacher_eval['ppl']:.2f} ({teacher_eval['seconds']:.0f} s)", flush=True)
    student_eval = evaluate_perplexity(student_dir, data_dir, args.eval_sequences)
    print(f"student: eval ppl {student_eval['ppl']:.2f} ({student_eval['seconds']:.0f} s)", flush=True)

    summary = build_summary(
        distill, run_dir, teacher_eval, student_eval, time.perf_counter() - started, timings
    )
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    md, png = write_report(run_dir, summary)
    print("\nraydistill demo: summary")
    print(summary_table(summary))
    print("health:")
    for line in verdict_lines([(h["check"], h["passed"], h["figure"]) for h in summary["health"]]):
        print("  " + line.replace("**", ""))
    print(f"\nstudent: {student_dir}\nreport:  {md}\nplots:   {png}\nsummary: {run_dir / SUMMARY_FILE}")
    return 0
