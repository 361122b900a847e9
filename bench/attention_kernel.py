"""sdpa or eager attention for the demo teacher's pre-training step, interleaved A/B.

    .venv/bin/python bench/attention_kernel.py            # demo teacher scale: ~4 min idle
    .venv/bin/python bench/attention_kernel.py --quick    # smoke run, writes to the temp dir

`train.attn_implementation: auto` runs sdpa unless the attention loss needs attention maps; `eager`
runs eager throughout. This measures the step `configs/teacher.yaml` trains (CE only, no teacher):
the real worker path (`build_engine` + `workers.step.train_step`, DeepSpeed ZeRO-0, one process, gloo
group of world size 1) with `preset:small-llama` (6.8M), 16 sequences x 128 tokens, 2 threads, in
fp32 and, where this CPU computes bf16 natively (or with --bf16), in bf16 as `precision: auto` then
trains it. The two kernels alternate per block on the same engine; reported per precision: median
step time on wall and process CPU time and the eager/sdpa ratio with a bootstrap 95% interval of
per-round ratios. Written to bench/results/attention_kernel.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.ab_timing import (  # noqa: E402
    arm_summary,
    assert_stepped,
    ci_text,
    interleaved_rounds,
    machine,
    timed,
    write_results,
)
from bench.common import SPECIAL_IDS, init_single_process_group, random_batches, worker_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "attention_kernel.json"
ARMS = ("auto", "eager")  # train.attn_implementation


def parse_args(
    argv: list[str] | None = None, doc: str = __doc__, results: Path = RESULTS
) -> argparse.Namespace:
    """The teacher pre-training step benches' options (this one's and bench/compile_step.py's):
    `doc` gives the description, `results` the default output (--quick: its name in the temp dir)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=2, help="timed steps per (round, precision, arm) block")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--bf16", action="store_true", help="measure bf16 even without native bf16 (slow)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.preset, args.vocab, args.seq_len = "small-llama", 4096, 128
    if args.quick:
        args.preset, args.vocab, args.seq_len, args.micro_batch = "tiny-llama", 512, 64, 4
        args.rounds, args.steps, args.warmup = 2, 1, 1
        args.out = args.out or str(Path(tempfile.gettempdir()) / results.name)
    args.out = Path(args.out or results)
    return args


def teacher_pretraining_config(args: argparse.Namespace, precision: str, total_steps: int) -> dict[str, Any]:
    """configs/teacher.yaml's step as a worker receives it: CE only, no teacher, no curriculum."""
    return worker_config(
        {
            "teacher": "none",
            "student": f"preset:{args.preset}",
            "curriculum": {"enabled": False, "phase1_end": 0.0, "phase2_end": 0.0},
            "loss": {"alpha_ce": 1.0, "alpha_kd": 0.0, "alpha_feature": 0.0, "alpha_attention": 0.0},
            "train": {
                "max_steps": total_steps,
                "micro_batch_size": args.micro_batch,
                "lr": 2e-3,
                "warmup_steps": 3,
            },
            "deepspeed": {"zero_stage": 0, "precision": precision},
            "scaling": {"num_workers": 1, "cpus_per_worker": float(args.threads)},
        }
    )


def run_info(args: argparse.Namespace, native: bool) -> dict[str, Any]:
    """What a teacher pre-training step bench ran (this one's, compile_step's, optimizer_step's) and where."""
    return {
        "cpu_has_native_bf16": native,
        "config": {
            "model": args.preset,
            "micro_batch": args.micro_batch,
            "seq_len": args.seq_len,
            "threads": args.threads,
            "rounds": args.rounds,
            "steps_per_block": args.steps,
        },
        "machine": machine(),
        "torch": torch.__version__,
    }


def build_engine_for(
    args: argparse.Namespace, precision: str, total_steps: int, fused_optimizer: bool = True
):
    """The model being pre-trained, wrapped as `workers.loop` wraps it, in a DeepSpeed engine."""
    from transformers import AutoModelForCausalLM

    from workers.engine import build_engine
    from workers.models import distillation_loss_for
    from workers.presets import build_preset_config
    from workers.student_module import StudentWithLoss

    cfg = teacher_pretraining_config(args, precision, total_steps)
    config = build_preset_config(args.preset, args.vocab, max(256, args.seq_len), SPECIAL_IDS)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    loss = distillation_loss_for(cfg, model, None)  # no teacher: CE only, sized on the model
    return build_engine(StudentWithLoss(model, loss), cfg, 1, fused_optimizer=fused_optimizer)


def teacher_step_setup(args: argparse.Namespace) -> tuple[bool, list[str], list[list[dict]]]:
    """What every teacher pre-training step bench (this one, compile_step, optimizer_step) starts
    with: the thread count, a world-size-1 gloo group, whether this CPU computes bf16 natively, the
    precisions to measure, and the timed windows of one random batch each."""
    from workers.precision import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    init_single_process_group()
    native = cpu_has_native_bf16()
    precisions = ["fp32"] + (["bf16"] if native or args.bf16 else [])
    windows = [[b] for b in random_batches(args.steps, args.micro_batch, args.seq_len, args.vocab, 0)]
    return native, precisions, windows


def timed_ce_step(engine, window) -> tuple[float, float]:
    """(wall s, process CPU s) of one CE-only pre-training step, which must not have been skipped."""
    from workers.step import train_step

    return timed(lambda: assert_stepped(train_step(engine, None, window, 0.5)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from workers.student_module import base_attention

    native, precisions, windows = teacher_step_setup(args)
    per_engine = len(ARMS) * (args.warmup + args.rounds * args.steps)
    engines = {p: build_engine_for(args, p, per_engine) for p in precisions}

    def step(precision: str, arm: str, window) -> tuple[float, float]:
        engine = engines[precision]
        engine.module.base_attention = base_attention(arm)
        return timed_ce_step(engine, window)

    samples, blocks = interleaved_rounds(precisions, ARMS, step, windows, args.rounds, args.warmup)
    results: dict[str, Any] = {
        "precisions": {p: arm_summary(samples, blocks, p, "eager", "auto") for p in precisions}
    }
    results.update(run_info(args, native))
    print()
    print(f"native bf16 on this CPU: {native}; auto = sdpa here (no attention loss in pre-training)")
    print(f"{'precision':<11}{'auto step ms':>14}{'eager step ms':>15}{'eager/auto (CPU time, 95% CI)':>33}")
    for precision in precisions:
        e = results["precisions"][precision]
        ratio = e["eager_over_auto_cpu"]
        print(
            f"{precision:<11}{e['auto_step_cpu_s'] * 1e3:>14.0f}{e['eager_step_cpu_s'] * 1e3:>15.0f}"
            f"{ci_text(ratio):>30}"
        )
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
