"""AdamW's kernel in the demo teacher's pre-training step: torch's per-tensor loop or fused, A/B.

    .venv/bin/python bench/optimizer_step.py            # demo teacher scale: ~3 min idle
    .venv/bin/python bench/optimizer_step.py --quick    # smoke run, writes to the temp dir

On CPU, `torch.optim.AdamW` without `foreach`/`fused` takes its single-tensor loop (foreach is a
CUDA default); `workers.engine.build_engine` asks for the fused kernel. The step is the one
`configs/teacher.yaml` trains, through the real worker path of bench/attention_kernel.py
(`build_engine` + `workers.step.train_step`, DeepSpeed ZeRO-0, one process, gloo group of world
size 1): `preset:small-llama` (6.8M), 16 x 128 tokens, 2 threads, eager attention, in fp32 and,
where this CPU computes bf16 natively (or with --bf16), in bf16 (DeepSpeed then keeps fp32 master
weights, and AdamW steps those). Two engines per precision start from the same weights and
alternate per block on the same batches. Reported per precision: the median step on wall and
process CPU time and the fused/loop ratio with a bootstrap 95% interval of per-round ratios, plus
the parameter difference after the timed steps (the two kernels compute the same update).
Written to bench/results/optimizer_step.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.ab_timing import arm_summary, ci_text, interleaved_rounds, write_results  # noqa: E402
from bench.attention_kernel import build_engine_for, run_info, teacher_step_setup, timed_ce_step  # noqa: E402
from bench.attention_kernel import parse_args as attention_kernel_args  # noqa: E402

RESULTS = REPO / "bench" / "results" / "optimizer_step.json"
ARMS = ("loop", "fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return attention_kernel_args(argv, __doc__, RESULTS)  # the same options and scales


def max_relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest max|a - b| / max|a| over the parameter tensors of two same-shaped models."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        x, y = pa.detach().float(), pb.detach().float()
        worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)))
    return worst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    native, precisions, windows = teacher_step_setup(args)
    per_engine = args.warmup + args.rounds * args.steps
    engines: dict[tuple[str, str], Any] = {}
    for precision in precisions:
        for arm in ARMS:
            # Same seed: same initial weights; only AdamW's kernel differs.
            engine = build_engine_for(args, precision, per_engine, fused_optimizer=arm == "fused")
            engine.module.base_attention = "eager"  # configs/teacher.yaml's kernel
            engines[(precision, arm)] = engine

    def step(precision: str, arm: str, window) -> tuple[float, float]:
        return timed_ce_step(engines[(precision, arm)], window)

    samples, blocks = interleaved_rounds(precisions, ARMS, step, windows, args.rounds, args.warmup)
    results: dict[str, Any] = {
        "precisions": {
            p: {
                **arm_summary(samples, blocks, p, "fused", "loop"),
                # Both engines took the same steps on the same batches.
                "max_relative_parameter_difference": max_relative_difference(
                    engines[(p, "loop")].module.student, engines[(p, "fused")].module.student
                ),
            }
            for p in precisions
        },
        **run_info(args, native),
    }
    print()
    print(
        f"{'precision':<11}{'loop ms':>9}{'fused ms':>10}{'fused/loop (CPU time, 95% CI)':>33}{'max rel dparam':>16}"
    )
    for precision in precisions:
        e = results["precisions"][precision]
        ratio = e["fused_over_loop_cpu"]
        print(
            f"{precision:<11}{e['loop_step_cpu_s'] * 1e3:>9.0f}{e['fused_step_cpu_s'] * 1e3:>10.0f}"
            f"{ci_text(ratio):>30}"
            f"{e['max_relative_parameter_difference']:>16.2e}"
        )
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
