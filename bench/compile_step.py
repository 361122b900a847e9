"""`train.compile` for the demo teacher's pre-training step: compiled or plain, interleaved A/B.

    .venv/bin/python bench/compile_step.py            # demo teacher scale: ~4 min idle
    .venv/bin/python bench/compile_step.py --quick    # smoke run, writes to the temp dir

The step `configs/teacher.yaml` trains (CE only, no teacher, eager attention) through the real
worker path of bench/attention_kernel.py (`build_engine` + `workers.step.train_step`, DeepSpeed
ZeRO-0, one process, gloo group of world size 1), `preset:small-llama` (6.8M), 16 x 128 tokens,
2 threads, in fp32 and, where this CPU computes bf16 natively (or with --bf16), in bf16. Two engines
per precision start from the same weights, one with `workers.student_module.compile_for_training`
applied as `train.compile: true` does; they alternate per block on the same batches. Reported per
precision: the compiled engine's first step (the compile), the median step on wall and process CPU
time, and the compiled/plain ratio with a bootstrap 95% interval of per-round ratios.
Written to bench/results/compile_step.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench.ab_timing import arm_summary, ci_text, interleaved_rounds, write_results  # noqa: E402
from bench.attention_kernel import build_engine_for, run_info, teacher_step_setup, timed_ce_step  # noqa: E402
from bench.attention_kernel import parse_args as attention_kernel_args  # noqa: E402

RESULTS = REPO / "bench" / "results" / "compile_step.json"
ARMS = ("plain", "compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return attention_kernel_args(argv, __doc__, RESULTS)  # the same options and scales


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from workers.student_module import compile_for_training

    native, precisions, windows = teacher_step_setup(args)
    per_engine = args.warmup + 1 + args.rounds * args.steps
    engines: dict[tuple[str, str], Any] = {}
    compile_s: dict[str, dict[str, float]] = {}
    for precision in precisions:
        for arm in ARMS:
            engine = build_engine_for(args, precision, per_engine)  # same seed: same initial weights
            engine.module.base_attention = "eager"  # configs/teacher.yaml's kernel
            if arm == "compiled":
                compile_for_training(engine.module.student)
                wall, cpu = timed_ce_step(engine, windows[0])
                compile_s[precision] = {"first_step_wall_s": wall, "first_step_cpu_s": cpu}
                print(f"{precision}: first compiled step {wall:.1f} s (compiling)", flush=True)
            engines[(precision, arm)] = engine

    def step(precision: str, arm: str, window) -> tuple[float, float]:
        return timed_ce_step(engines[(precision, arm)], window)

    samples, blocks = interleaved_rounds(precisions, ARMS, step, windows, args.rounds, args.warmup)
    results: dict[str, Any] = {
        "precisions": {
            p: {**arm_summary(samples, blocks, p, "compiled", "plain"), **compile_s[p]} for p in precisions
        },
        **run_info(args, native),
    }
    print()
    print(
        f"{'precision':<11}{'compile s':>11}{'plain ms':>10}{'compiled ms':>13}{'compiled/plain (CPU time, 95% CI)':>37}"
    )
    for precision in precisions:
        e = results["precisions"][precision]
        ratio = e["compiled_over_plain_cpu"]
        print(
            f"{precision:<11}{e['first_step_wall_s']:>11.1f}{e['plain_step_cpu_s'] * 1e3:>10.0f}"
            f"{e['compiled_step_cpu_s'] * 1e3:>13.0f}"
            f"{ci_text(ratio):>34}"
        )
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
