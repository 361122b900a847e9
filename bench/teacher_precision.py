"""The frozen teacher in fp32 or bf16: one distillation worker's step time, interleaved A/B.

    .venv/bin/python bench/teacher_precision.py            # demo scale, one demo worker: ~3 min idle
    .venv/bin/python bench/teacher_precision.py --quick    # smoke run, writes to the temp dir

`deepspeed.teacher_precision: auto` runs the teacher in bf16 where the hardware computes bf16
natively (workers/precision.py) while the student keeps its own precision. This measures what that
buys on this machine: the real worker path of bench/step_throughput.py (`build_engine` +
`workers.step.train_step`, DeepSpeed ZeRO-2, one process, gloo group of world size 1), the demo's
teacher and student (`configs/demo.yaml`: 8 sequences x 128 tokens per worker, one thread), stepped
with the fp32 teacher and with a bf16 copy of it, alternating per block, in phase 1 (logits only)
and phase 3 (hidden states and eager attention maps too). Reported per phase: median step time on
wall and process CPU time, the bf16/fp32 ratio with a bootstrap 95% interval of per-round ratios,
and the teacher's forward alone. Written to bench/results/teacher_precision.json.
"""

from __future__ import annotations

import argparse
import copy
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
from bench.common import init_single_process_group, median, random_batches  # noqa: E402
from bench.step_throughput import PHASE_PROGRESS, build_models, run_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "teacher_precision.json"
ARMS = ("fp32", "bf16")
PHASES = (1, 3)  # logits only; hidden states and eager attention maps too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="timed steps per (round, phase, arm) block")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    # The fields bench/step_throughput.run_config reads.
    args.teacher, args.student, args.derive_layers = "small-llama", "small-llama-student", 2
    args.vocab, args.seq_len, args.grad_accum, args.seed, args.zero_stage = 4096, 128, 1, 0, 2
    if args.quick:
        args.teacher, args.student, args.vocab, args.seq_len = "tiny-llama", "derived", 512, 64
        args.rounds, args.steps, args.warmup = 2, 1, 1
        args.out = args.out or str(Path(tempfile.gettempdir()) / "teacher_precision.json")
    args.out = Path(args.out or RESULTS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    init_single_process_group()

    from workers.engine import build_engine
    from workers.precision import cpu_has_native_bf16
    from workers.step import train_step
    from workers.student_module import StudentWithLoss, model_outputs

    total = 2 * 2 * (args.warmup + args.rounds * args.steps)
    cfg = run_config(args, total)
    teacher32, student, loss = build_models(cfg, args.vocab, max(256, args.seq_len))
    teachers = {"fp32": teacher32, "bf16": copy.deepcopy(teacher32).to(torch.bfloat16)}
    engine = build_engine(StudentWithLoss(student, loss), cfg, 1)
    windows = [[b] for b in random_batches(args.steps, args.micro_batch, args.seq_len, args.vocab, 0)]

    def step(phase: int, arm: str, window) -> tuple[float, float]:
        return timed(lambda: assert_stepped(train_step(engine, teachers[arm], window, PHASE_PROGRESS[phase])))

    def teacher_forward(phase: int, arm: str) -> None:
        request = loss.required_outputs(PHASE_PROGRESS[phase])
        batch = windows[0][0]
        with torch.no_grad():
            _, cpu = timed(
                lambda: model_outputs(teachers[arm], batch["input_ids"], batch["attention_mask"], request)
            )
        forward.setdefault((phase, arm), []).append(cpu)

    forward: dict[tuple[int, str], list[float]] = {}
    samples, blocks = interleaved_rounds(
        PHASES, ARMS, step, windows, args.rounds, args.warmup, after_block=teacher_forward
    )
    results: dict[str, Any] = {"phases": {}}
    for phase in PHASES:
        entry = arm_summary(samples, blocks, phase, "bf16", "fp32")
        entry["teacher_forward_cpu_s"] = {arm: median(forward[(phase, arm)]) for arm in ARMS}
        results["phases"][str(phase)] = entry
    results.update(
        {
            "cpu_has_native_bf16": cpu_has_native_bf16(),
            "config": {
                "teacher": args.teacher,
                "student": args.student,
                "micro_batch": args.micro_batch,
                "seq_len": args.seq_len,
                "threads": args.threads,
                "rounds": args.rounds,
                "steps_per_block": args.steps,
            },
            "machine": machine(),
            "torch": torch.__version__,
        }
    )
    print()
    print(f"native bf16 on this CPU: {results['cpu_has_native_bf16']}")
    print(
        f"{'phase':<7}{'fp32 step ms':>14}{'bf16 step ms':>14}{'bf16/fp32 (CPU time, 95% CI)':>32}{'teacher fwd ms':>18}"
    )
    for phase in PHASES:
        e = results["phases"][str(phase)]
        ratio = e["bf16_over_fp32_cpu"]
        fwd = e["teacher_forward_cpu_s"]
        print(
            f"{phase:<7}{e['fp32_step_cpu_s'] * 1e3:>14.0f}{e['bf16_step_cpu_s'] * 1e3:>14.0f}"
            f"{ci_text(ratio):>29}"
            f"{fwd['fp32'] * 1e3:>9.0f} / {fwd['bf16'] * 1e3:.0f}"
        )
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
