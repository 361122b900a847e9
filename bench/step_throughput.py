"""Step throughput: raydistill's worker step against a hand-written PyTorch loop, interleaved A/B.

    .venv/bin/python bench/step_throughput.py            # demo scale: ~4 min idle, ~25 min at load 40
    .venv/bin/python bench/step_throughput.py --quick    # smoke run, writes to the temp dir

Arm A ("raydistill") is the real worker path: `build_engine(StudentWithLoss(student, loss), cfg, 1)`
(DeepSpeed, ZeRO stage 2 by default, one process, a gloo process group of world size 1 made here
as Ray Train would) stepped by `workers.step.train_step`.
Arm B ("reference") is the minimal loop a person would write for the same math: a copy of the same
student and projectors (identical initial weights), the same frozen teacher under `no_grad` asked
for the same outputs (eager attention only in phase 3), the `workers.losses` functions called with
the phase's weights, `loss.backward(); clip_grad_norm_; opt.step(); sched.step(); opt.zero_grad()`,
torch AdamW with the same hyper-parameters and no-decay groups, the same warm-up/cosine LR, and one
`float(loss)` per step (the loss a loop logs).

Before timing, a few steps from identical weights check that both arms compute the same thing
(losses, learning rates and updated parameters agree). Then, for each round, each (phase, arm)
block runs `--steps` optimizer steps on the same batches; the order of the arms alternates every
round and the order of the phases every two rounds, so machine noise (2 shared cores) falls on both
arms alike. Reported: median step time and tokens/s per arm and phase, their ratio, the median of
the per-round paired ratios with a bootstrap 95% interval, and MFU against a matmul peak measured in
the same process (`MatmulPeak`). Every figure is given on wall time (what the targets are about) and
on process CPU time, which stays meaningful when other jobs load the shared cores.

Threads: `torch.set_num_threads(--threads)`, default 1, the intra-op threads a Ray Train worker
with `cpus_per_worker: 1` gets (workers/loop.py sets the same). The matmul peak uses the same count.

Model FLOPs per optimizer step (PaLM-style, per token, T = sequence length):
    student (trained):  6 * N_s + 12 * L_s * d_s * T     (+ 6 * N_proj in phase 3: the projectors)
    teacher (frozen):   2 * N_t +  4 * L_t * d_t * T     (forward only)
N_* counts the weights of every nn.Linear (the LM head included, the embedding lookup excluded);
the L * d * T terms are the attention scores and the weighted sum (QK^T and AV). Softmaxes, norms
and the loss arithmetic are not counted. MFU = FLOPs / step time / measured peak, with the step and
the peak on the same clock (wall or CPU time).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.ab_timing import CLOCKS, assert_stepped, timed  # noqa: E402
from bench.common import (  # noqa: E402
    SPECIAL_IDS,
    init_single_process_group,
    load_average,
    median,
    paired_summary,
    random_batches,
    worker_config,
)

RESULTS = REPO / "bench" / "results" / "step_throughput.json"
PHASE_PROGRESS = {1: 0.1, 3: 0.9}  # with the curriculum boundaries 0.3 / 0.6 (configs/tiny.yaml)
ARMS = ("raydistill", "reference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per (round, phase, arm) block")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per (phase, arm) before the rounds")
    p.add_argument("--rounds", type=int, default=24, help="interleaved A/B rounds")
    p.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a 1-CPU Ray worker: 1)")
    p.add_argument("--teacher", default="small-llama", help="workers.presets name")
    p.add_argument("--student", default="small-llama-student", help="workers.presets name, or 'derived'")
    p.add_argument("--derive-layers", type=int, default=2, help="student layers when --student derived")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, 2 rounds of 2 steps")
    p.add_argument(
        "--out", type=Path, default=None, help=f"JSON results (default {RESULTS.relative_to(REPO)})"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 2, 1, 2
        args.teacher, args.student, args.vocab, args.seq_len, args.micro_batch = (
            "tiny-llama",
            "derived",
            512,
            64,
            4,
        )
        if args.out is None:
            # A smoke run must not overwrite the recorded figures.
            args.out = Path(tempfile.gettempdir()) / "step_throughput_quick.json"
    if args.out is None:
        args.out = RESULTS
    for name in ("steps", "rounds", "micro_batch", "grad_accum", "threads", "seq_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def run_config(args: argparse.Namespace, total_steps: int) -> dict[str, Any]:
    """The run config as a Ray Train worker receives it: the config defaults (curriculum 0.3 / 0.6,
    every loss part on, fp32) at the bench's models, batch and steps."""
    return worker_config(
        {
            "teacher": f"preset:{args.teacher}",
            "student": "derived" if args.student == "derived" else f"preset:{args.student}",
            "derive": {"num_layers": args.derive_layers},
            "train": {
                "seed": args.seed,
                "max_steps": total_steps,
                "micro_batch_size": args.micro_batch,
                "grad_accum": args.grad_accum,
                "warmup_steps": 3,
            },
            "deepspeed": {"zero_stage": args.zero_stage},
            "scaling": {"num_workers": 1, "cpus_per_worker": float(args.threads)},
        }
    )


# ---------------------------------------------------------------------------------------------
# Models and data


def build_models(cfg: dict[str, Any], vocab: int, max_positions: int):
    """Teacher and student as `workers.loop.build_models` builds them, from preset configs (no tokenizer)."""
    from transformers import AutoModelForCausalLM

    from workers.models import derive_student, distillation_loss_for
    from workers.presets import build_preset_config, preset_name

    def from_preset(spec: str, seed: int):
        config = build_preset_config(preset_name(spec), vocab, max_positions, SPECIAL_IDS)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    seed = cfg["train"]["seed"]
    teacher = from_preset(cfg["teacher"], seed).eval().requires_grad_(False)
    if cfg["student"] == "derived":
        student = derive_student(teacher, cfg["derive"], seed + 1)
    else:
        student = from_preset(cfg["student"], seed + 1)
    return teacher, student, distillation_loss_for(cfg, student, teacher)


# ---------------------------------------------------------------------------------------------
# Arm B: the hand-written loop


def warmup_cosine_ratio(iteration: int, total: int, warmup: int, min_ratio: float) -> float:
    """DeepSpeed WarmupCosineLR's ratio (linear warm-up from 0) after `iteration` scheduler steps;
    -1 (before the first step) gives 0, as DeepSpeed's does."""
    warmup = max(2, warmup)
    if iteration < 0:
        return 0.0
    if iteration < warmup:
        return iteration / warmup
    progress = min(1.0, (iteration - warmup + 1) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ReferenceLoop:
    def __init__(self, student, projectors, teacher, cfg: dict[str, Any], layer_map, attention_pairs):
        train, loss = cfg["train"], cfg["loss"]
        self.student, self.projectors, self.teacher = student.train(), projectors.train(), teacher
        self.layer_map, self.attention_pairs = layer_map, attention_pairs
        self.temperature, self.feature_norm = float(loss["kd_temperature"]), loss["feature_norm"]
        self.alpha = {c: float(loss[f"alpha_{c}"]) for c in ("ce", "kd", "feature", "attention")}
        self.params = [p for m in (student, projectors) for p in m.parameters() if p.requires_grad]
        self.clip = float(train["grad_clip"])
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": [p for p in self.params if p.ndim >= 2],
                    "weight_decay": float(train["weight_decay"]),
                },
                {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=float(train["lr"]),
            betas=(0.9, 0.95),
        )
        total, warmup, min_ratio = (
            int(train["max_steps"]),
            int(train["warmup_steps"]),
            float(train["min_lr_ratio"]),
        )
        # LambdaLR's k-th lr is DeepSpeed's after k-1 scheduler steps (it starts from iteration -1).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: warmup_cosine_ratio(k - 1, total, warmup, min_ratio)
        )

    def weights(self, phase: int) -> dict[str, float]:
        # Phase 1: ce + kd; phase 3: everything (the curriculum table in workers/curriculum.py).
        return {c: (a if phase == 3 or c in ("ce", "kd") else 0.0) for c, a in self.alpha.items()}

    def _forward(self, model, batch, hidden: bool, attentions: bool):
        wanted = "eager" if attentions else "sdpa"  # sdpa returns no attention maps
        if model.config._attn_implementation != wanted:
            model.set_attn_implementation(wanted)
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=hidden,
            output_attentions=attentions,
            use_cache=False,
        )

    def step(self, micro_batches, phase: int) -> float:
        from workers.losses import attention_loss, ce_loss, feature_loss, kd_loss

        w = self.weights(phase)
        hidden, attentions = w["feature"] > 0, w["attention"] > 0
        tokens = [int(b["attention_mask"].sum()) for b in micro_batches]
        window = sum(tokens)
        logged = 0.0
        for batch, n in zip(micro_batches, tokens):
            mask = batch["attention_mask"].bool()
            with torch.no_grad():
                t = self._forward(self.teacher, batch, hidden, attentions)
            s = self._forward(self.student, batch, hidden, attentions)
            loss = w["ce"] * ce_loss(s.logits, batch["labels"])
            loss = loss + w["kd"] * kd_loss(s.logits, t.logits, self.temperature, mask=mask)
            if hidden:
                per_pair = [
                    feature_loss(proj(s.hidden_states[i]), t.hidden_states[j], self.feature_norm, mask)
                    for proj, (i, j) in zip(self.projectors, self.layer_map)
                ]
                loss = loss + w["feature"] * torch.stack(per_pair).mean()
            if attentions:
                per_pair = [
                    attention_loss(s.attentions[i - 1], t.attentions[j - 1], mask)
                    for i, j in self.attention_pairs
                ]
                loss = loss + w["attention"] * torch.stack(per_pair).mean()
            (loss * (n / window)).backward()  # token-weighted over the accumulation window
            logged += float(loss.detach()) * n / window
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)  # pre-clip norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logged


# ---------------------------------------------------------------------------------------------
# Measurements


class MatmulPeak:
    """Best fp32 `torch.mm` rate at torch's current thread count, in GFLOP/s of wall time and of process
    CPU time, kept over every `sample()` of the run: on a loaded machine the best of many short samples
    is the one that had the cores (wall), and CPU time barely depends on the load at all."""

    def __init__(self, n: int = 1024) -> None:
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(self.a, self.b)
        self.best = {clock: 0.0 for clock in CLOCKS}

    def sample(self, reps: int = 3) -> None:
        flops = 2 * self.n**3
        for _ in range(reps):
            wall, cpu = timed(lambda: torch.mm(self.a, self.b))
            rates = {"wall": flops / wall / 1e9, "cpu": flops / max(cpu, 1e-9) / 1e9}
            for clock in CLOCKS:
                self.best[clock] = max(self.best[clock], rates[clock])


def linear_weights(*modules: torch.nn.Module) -> int:
    return sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Linear))


def flops_per_step(teacher, student, projectors, tokens: int, seq_len: int) -> dict[int, float]:
    """Model FLOPs of one optimizer step (module docstring), per phase."""
    from workers.models import hidden_size, num_layers

    def attention(model) -> float:
        return num_layers(model) * hidden_size(model) * seq_len

    student_fb = 6 * linear_weights(student) + 12 * attention(student)
    teacher_f = 2 * linear_weights(teacher) + 4 * attention(teacher)
    return {
        1: tokens * (student_fb + teacher_f),
        3: tokens * (student_fb + 6 * linear_weights(projectors) + teacher_f),
    }


def equivalence_check(engine, reference: ReferenceLoop, teacher, batches, grad_accum: int) -> dict[str, Any]:
    """From identical weights, both arms must log the same loss, use the same lr and land on the same
    parameters. Steps: phase 1, 3, 3, 3; the first two run at lr 0 (DeepSpeed's linear warm-up starts at
    0 and its first step uses the pre-start lr, also 0), so the fourth step's loss checks the third's update."""
    from workers.step import train_step

    rows = []
    for i, phase in enumerate((1, 3, 3, 3)):
        window = batches[i * grad_accum : (i + 1) * grad_accum]
        lr_a = engine.optimizer.param_groups[0]["lr"]
        lr_b = reference.optimizer.param_groups[0]["lr"]
        a = train_step(engine, teacher, window, PHASE_PROGRESS[phase]).metrics["loss/total"]
        b = reference.step(window, phase)
        norm_a = engine.get_global_grad_norm()
        rows.append(
            {
                "phase": phase,
                "loss_raydistill": a,
                "loss_reference": b,
                "lr_raydistill": lr_a,
                "lr_reference": lr_b,
                "grad_norm_raydistill": None if norm_a is None else float(norm_a),
                "grad_norm_reference": float(reference.grad_norm),
            }
        )
    theirs = dict(engine.module.named_parameters())
    ours = {f"student.{k}": v for k, v in reference.student.named_parameters()}
    ours.update({f"loss.projectors.{k}": v for k, v in reference.projectors.named_parameters()})
    if int(engine.zero_optimization_stage()) == 3:
        max_diff = mean_diff = math.nan  # partitioned parameters are placeholders outside forward
    else:
        diffs = torch.cat([(theirs[k].detach() - v.detach()).abs().flatten() for k, v in ours.items()])
        max_diff, mean_diff = float(diffs.max()), float(diffs.mean())
    # Adam divides by sqrt(v): gradient entries near its eps (1e-8) turn float rounding differences into
    # visible update differences, so the max is set by a few rarely-seen embedding rows; the mean is
    # the figure to compare with the lr.
    return {
        "steps": rows,
        "max_abs_loss_diff": max(abs(r["loss_raydistill"] - r["loss_reference"]) for r in rows),
        # The pre-clip gradient norm checks backward and clipping (Adam's first update hides scale).
        "max_rel_grad_norm_diff": max(
            abs(r["grad_norm_raydistill"] - r["grad_norm_reference"]) / r["grad_norm_reference"]
            if r["grad_norm_raydistill"] is not None
            else math.nan
            for r in rows
        ),
        "max_abs_param_diff_after": max_diff,
        "mean_abs_param_diff_after": mean_diff,
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    init_single_process_group()

    from workers.engine import build_engine
    from workers.models import count_parameters
    from workers.step import train_step
    from workers.student_module import StudentWithLoss

    windows_per_block = args.steps
    check_windows = 4
    total_steps = check_windows + 2 * (args.warmup + args.rounds * args.steps)
    cfg = run_config(args, total_steps)
    teacher, student, loss = build_models(cfg, args.vocab, max(256, args.seq_len))
    # Identical initial weights: copy before DeepSpeed flattens the parameters into its buffers.
    reference = ReferenceLoop(
        copy.deepcopy(student),
        copy.deepcopy(loss.projectors),
        teacher,
        cfg,
        loss.layer_map,
        loss.attention_pairs,
    )
    flops = flops_per_step(
        teacher, student, loss.projectors, args.micro_batch * args.grad_accum * args.seq_len, args.seq_len
    )
    engine = build_engine(StudentWithLoss(student, loss), cfg, 1)

    batches = random_batches(
        max(check_windows, windows_per_block) * args.grad_accum,
        args.micro_batch,
        args.seq_len,
        args.vocab,
        args.seed,
    )
    windows = [batches[i * args.grad_accum : (i + 1) * args.grad_accum] for i in range(windows_per_block)]
    tokens_per_step = args.micro_batch * args.grad_accum * args.seq_len

    peak = MatmulPeak()
    peak.sample(reps=8)
    equivalence = equivalence_check(engine, reference, teacher, batches, args.grad_accum)

    def run(arm: str, phase: int, window) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one optimizer step."""
        if arm == "raydistill":
            return timed(lambda: assert_stepped(train_step(engine, teacher, window, PHASE_PROGRESS[phase])))
        return timed(lambda: reference.step(window, phase))

    for phase in (1, 3):
        for arm in ARMS:
            for i in range(args.warmup):
                run(arm, phase, windows[i % len(windows)])

    # Wall time is what the targets are about; process CPU time barely moves when other processes take
    # the cores (2 shared cores here) and is the noise-robust cross-check.
    samples: dict[tuple[str, str, int], list[float]] = {
        (c, a, p): [] for c in CLOCKS for a in ARMS for p in (1, 3)
    }
    rounds: list[dict[tuple[str, str, int], float]] = []  # per round: block medians
    for r in range(args.rounds):
        arms = ARMS if r % 2 == 0 else ARMS[::-1]
        phases = (1, 3) if (r // 2) % 2 == 0 else (3, 1)
        block: dict[tuple[str, str, int], float] = {}
        for phase in phases:
            for arm in arms:
                measured = [run(arm, phase, w) for w in windows]
                for i, clock in enumerate(CLOCKS):
                    values = [m[i] for m in measured]
                    samples[(clock, arm, phase)].extend(values)
                    block[(clock, arm, phase)] = median(values)
        rounds.append(block)
        peak.sample()
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{a} p{p} {block[('wall', a, p)] * 1e3:.0f} ms ({block[('cpu', a, p)] * 1e3:.0f} cpu)"
                for p in (1, 3)
                for a in ARMS
            ),
            flush=True,
        )
    peak.sample(reps=8)

    med = {k: median(v) for k, v in samples.items()}
    figures: dict[str, Any] = {}
    for clock in CLOCKS:
        suffix = "" if clock == "wall" else "_cpu_time"
        for p in (1, 3):
            # tokens/s ratio = inverse step-time ratio (same tokens per step)
            figures[f"ratio_phase{p}{suffix}"] = med[(clock, "reference", p)] / med[(clock, "raydistill", p)]
            figures[f"ratio_phase{p}{suffix}_paired"] = paired_summary(
                [b[(clock, "reference", p)] / b[(clock, "raydistill", p)] for b in rounds]
            )
        figures[f"phase1_over_phase3_step_time{suffix}"] = (
            med[(clock, "raydistill", 1)] / med[(clock, "raydistill", 3)]
        )
        figures[f"phase1_over_phase3_step_time{suffix}_paired"] = paired_summary(
            [b[(clock, "raydistill", 1)] / b[(clock, "raydistill", 3)] for b in rounds]
        )
        figures[f"phase1_over_phase3_step_time{suffix}_reference"] = (
            med[(clock, "reference", 1)] / med[(clock, "reference", 3)]
        )
    for p in (1, 3):
        for arm in ARMS:
            key = f"mfu_phase{p}" + ("" if arm == "raydistill" else "_reference")
            figures[key] = flops[p] / med[("wall", arm, p)] / (peak.best["wall"] * 1e9)
            figures[key + "_cpu_time"] = flops[p] / med[("cpu", arm, p)] / (peak.best["cpu"] * 1e9)
    results: dict[str, Any] = {
        **figures,
        "targets": {
            "ratio_ge_0.95_both_phases": min(figures["ratio_phase1"], figures["ratio_phase3"]) >= 0.95,
            "ratio_ge_0.95_both_phases_cpu_time": min(
                figures["ratio_phase1_cpu_time"], figures["ratio_phase3_cpu_time"]
            )
            >= 0.95,
            # "Measurably": the 95% interval of the per-round paired ratio lies below 1.
            "phase1_cheaper_than_phase3": figures["phase1_over_phase3_step_time_paired"]["ci95"][1] < 1.0,
            "phase1_cheaper_than_phase3_cpu_time": (
                figures["phase1_over_phase3_step_time_cpu_time_paired"]["ci95"][1] < 1.0
            ),
        },
        "medians": {
            f"{arm}_phase{phase}": {
                "step_s": med[("wall", arm, phase)],
                "step_cpu_s": med[("cpu", arm, phase)],
                "tokens_per_s": tokens_per_step / med[("wall", arm, phase)],
                "tokens_per_cpu_s": tokens_per_step / med[("cpu", arm, phase)],
                "steps_timed": len(samples[("wall", arm, phase)]),
            }
            for phase in (1, 3)
            for arm in ARMS
        },
        "round_block_medians_s": [
            {f"{c}_{a}_phase{p}": v for (c, a, p), v in block.items()} for block in rounds
        ],
        "step_times_s": {f"{c}_{a}_phase{p}": v for (c, a, p), v in samples.items()},
        "matmul_peak_gflops": peak.best["wall"],
        "matmul_peak_gflops_cpu_time": peak.best["cpu"],
        "matmul_size": peak.n,
        "model_gflops_per_step": {f"phase{p}": f / 1e9 for p, f in flops.items()},
        "equivalence_check": equivalence,
        "machine": {
            "torch": torch.__version__,
            "deepspeed": __import__("deepspeed").__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "setup": {
            "command": "python bench/step_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "teacher": cfg["teacher"],
            "student": cfg["student"],
            "teacher_params": count_parameters(teacher),
            "student_params": count_parameters(student),
            "projector_params": count_parameters(loss.projectors),
            "layer_map": loss.layer_map,
            "vocab": args.vocab,
            "seq_len": args.seq_len,
            "micro_batch": args.micro_batch,
            "grad_accum": args.grad_accum,
            "tokens_per_step": tokens_per_step,
            "zero_stage": args.zero_stage,
            "phase_progress": PHASE_PROGRESS,
            "steps_per_block": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "config": cfg,
        },
    }
    print()
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    dist.destroy_process_group()
    return results


def _paired(summary: dict[str, Any]) -> str:
    lo, hi = summary["ci95"]
    return f"{summary['median']:.3f} [{lo:.3f}, {hi:.3f}]"


def format_table(results: dict[str, Any]) -> str:
    setup, m, t = results["setup"], results["medians"], results["targets"]
    lines = [
        f"teacher {setup['teacher']} ({setup['teacher_params'] / 1e6:.2f}M), student {setup['student']} "
        f"({setup['student_params'] / 1e6:.2f}M + {setup['projector_params'] / 1e3:.0f}k projectors), "
        f"{setup['micro_batch']}x{setup['seq_len']} tokens x {setup['grad_accum']} micro-batch(es), "
        f"ZeRO-{setup['zero_stage']}, {results['machine']['torch_threads']} thread(s), "
        f"{setup['rounds']} rounds x {setup['steps_per_block']} step(s) per arm and phase",
        "",
        "| phase | arm | step ms (wall, median) | tokens/s (wall) | step ms (CPU, median) | tokens/CPU-s "
        "| MFU (wall) | MFU (CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase in (1, 3):
        for arm in ARMS:
            row = m[f"{arm}_phase{phase}"]
            mfu = f"mfu_phase{phase}" + ("" if arm == "raydistill" else "_reference")
            lines.append(
                f"| {phase} | {arm} | {row['step_s'] * 1e3:.0f} | {row['tokens_per_s']:.0f} "
                f"| {row['step_cpu_s'] * 1e3:.0f} | {row['tokens_per_cpu_s']:.0f} "
                f"| {results[mfu]:.1%} | {results[mfu + '_cpu_time']:.1%} |"
            )
    r = results
    lines += [
        "",
        "| raydistill / reference tokens/s | phase 1 | phase 3 |",
        "| --- | --- | --- |",
        f"| wall, ratio of medians | {r['ratio_phase1']:.3f} | {r['ratio_phase3']:.3f} |",
        f"| wall, per-round paired median [95% CI] | {_paired(r['ratio_phase1_paired'])} "
        f"| {_paired(r['ratio_phase3_paired'])} |",
        f"| CPU time, ratio of medians | {r['ratio_phase1_cpu_time']:.3f} | {r['ratio_phase3_cpu_time']:.3f} |",
        f"| CPU time, per-round paired median [95% CI] | {_paired(r['ratio_phase1_cpu_time_paired'])} "
        f"| {_paired(r['ratio_phase3_cpu_time_paired'])} |",
        "",
        f"phase-1 / phase-3 step time, raydistill: wall {r['phase1_over_phase3_step_time']:.3f} "
        f"(paired {_paired(r['phase1_over_phase3_step_time_paired'])}), CPU "
        f"{r['phase1_over_phase3_step_time_cpu_time']:.3f} "
        f"(paired {_paired(r['phase1_over_phase3_step_time_cpu_time_paired'])}); reference: wall "
        f"{r['phase1_over_phase3_step_time_reference']:.3f}, CPU "
        f"{r['phase1_over_phase3_step_time_cpu_time_reference']:.3f}",
        f"model GFLOP/step: phase 1 {r['model_gflops_per_step']['phase1']:.1f}, "
        f"phase 3 {r['model_gflops_per_step']['phase3']:.1f}; matmul peak {r['matmul_peak_gflops']:.1f} "
        f"GFLOP/s wall, {r['matmul_peak_gflops_cpu_time']:.1f} per CPU-s (fp32 torch.mm, same threads)",
        f"load average (1/5/15 min) before {r['machine']['load_average_before']}, "
        f"after {r['machine']['load_average_after']} on {r['machine']['cpu_count']} cores",
    ]
    eq = r["equivalence_check"]
    lines += [
        f"equivalence from identical weights: max |loss diff| {eq['max_abs_loss_diff']:.1e} over "
        f"{len(eq['steps'])} steps, max relative grad-norm diff {eq['max_rel_grad_norm_diff']:.1e}; |param diff| after: mean {eq['mean_abs_param_diff_after']:.1e}, "
        f"max {eq['max_abs_param_diff_after']:.1e} (last lr {eq['steps'][-1]['lr_reference']:.1e})",
        f"targets: ratio >= 0.95 in both phases: wall {t['ratio_ge_0.95_both_phases']}, "
        f"CPU time {t['ratio_ge_0.95_both_phases_cpu_time']}; phase 1 measurably cheaper than phase 3: "
        f"wall {t['phase1_cheaper_than_phase3']}, CPU time {t['phase1_cheaper_than_phase3_cpu_time']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
