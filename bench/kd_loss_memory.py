"""Peak memory and time of the KD loss, forward + backward: `workers.losses.kd_loss` (chunked) against
the unchunked autograd computation it replaced.

    .venv/bin/python bench/kd_loss_memory.py            # V=152064: both at N=2048/4096, chunked also at 8192
    .venv/bin/python bench/kd_loss_memory.py --quick    # smoke run (V=32000, N=256/512), writes to the temp dir

Each (variant, N) runs in a fresh subprocess (`--child`): it fills bf16 student and teacher logits
(B*T = N tokens, a bf16 run's logits; the student's require grad) a few rows at a time, resets the
kernel's resident-set high-water mark (/proc/self/clear_refs = 5) and reads VmRSS, then runs
forward + backward `--repeats` times. Peak = VmHWM after the runs minus VmRSS before them: what
the loss adds on top of its inputs, the bf16 gradient of the student logits included. Time =
median wall and process CPU time of a forward + backward. Neither variant fits this 24 GiB machine
at the target N=16384 (the unchunked one needs ~5 fp32 (N, V) tensors, the chunked one's inputs and
gradient alone are ~14 GiB): each variant's peak there is extrapolated linearly from its two
largest measured N (peak is linear in N up to a constant), and the table says so.
kind=forward_kl, T=2, no mask (packed sequences), 2 threads.
Written to bench/results/kd_loss_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RESULTS = REPO / "bench" / "results" / "kd_loss_memory.json"
VARIANTS = ("chunked", "unchunked")
GIB = 2**30


def unchunked_kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """forward_kl as workers/losses.py computed it before chunking (c211ad6), no mask: two full
    (N, V) fp32 log-softmaxes and the teacher's probabilities, all kept by autograd for backward."""
    vocab = student_logits.shape[-1]
    # (B, T, V) -> (N, V)
    log_s = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    return per_token.sum() / max(per_token.numel(), 1) * temperature**2


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status: VmRSS (resident now) or VmHWM (its high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_high_water_mark() -> None:
    """VmHWM := VmRSS (Linux >= 4.0), so start-up and input filling do not count in the peak."""
    Path("/proc/self/clear_refs").write_text("5")


def random_logits(tokens: int, vocab: int, seed: int, rows: int = 256) -> torch.Tensor:
    """(1, tokens, vocab) bf16 logits, filled `rows` at a time (no full-size fp32 temporary)."""
    out = torch.empty(tokens, vocab, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, tokens, rows):
        block = out[start : start + rows]
        block.copy_(torch.randn(block.shape, generator=gen) * 2.0)
    return out[None]


def child(variant: str, tokens: int, vocab: int, repeats: int, threads: int) -> dict[str, Any]:
    """One variant at one N in this process: peak bytes over the inputs and per-run times."""
    from workers.losses import kd_loss

    torch.set_num_threads(threads)
    student = random_logits(tokens, vocab, seed=1).requires_grad_()
    teacher = random_logits(tokens, vocab, seed=2)
    reset_high_water_mark()
    before = status_bytes("VmRSS")
    walls, cpus, values = [], [], []
    for _ in range(repeats):
        student.grad = None
        start, cpu = time.perf_counter(), time.process_time()
        if variant == "chunked":
            loss = kd_loss(student, teacher, 2.0)
        else:
            loss = unchunked_kd_loss(student, teacher, 2.0)
        loss.backward()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        values.append(loss.item())
    grad_norm = student.grad.float().norm().item()
    return {
        "variant": variant,
        "tokens": tokens,
        "vocab": vocab,
        "peak_over_inputs_bytes": status_bytes("VmHWM") - before,
        "rss_inputs_bytes": before,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "wall_s": walls,
        "cpu_s": cpus,
        "loss": values[0],
        "student_grad_norm": grad_norm,
    }


def run_child(variant: str, tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant, str(tokens), "--vocab", str(args.vocab)]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{variant:<10} N={tokens:<6} peak {result['peak_over_inputs_bytes'] / GIB:6.2f} GiB, "
        f"wall {statistics.median(result['wall_s']):.2f} s",
        flush=True,
    )
    return result


def extrapolate(points: dict[int, float], tokens: int) -> float:
    """Linear fit through the two largest measured N, evaluated at `tokens`."""
    (n1, y1), (n2, y2) = sorted(points.items())[-2:]
    return y1 + (y2 - y1) * (tokens - n1) / (n2 - n1)


def summarize(runs: list[dict[str, Any]], target: int) -> list[dict[str, Any]]:
    """Per N: both variants' peak (measured or extrapolated), time and the ratios."""
    by = {(r["variant"], r["tokens"]): r for r in runs}
    rows = []
    for tokens in sorted({r["tokens"] for r in runs} | {target}):
        row: dict[str, Any] = {"tokens": tokens}
        for variant in VARIANTS:
            run = by.get((variant, tokens))
            if run is not None:
                row[f"{variant}_peak_gib"] = run["peak_over_inputs_bytes"] / GIB
                row[f"{variant}_wall_s"] = statistics.median(run["wall_s"])
                row[f"{variant}_cpu_s"] = statistics.median(run["cpu_s"])
                row[f"{variant}_measured"] = True
            else:
                points = {
                    r["tokens"]: r["peak_over_inputs_bytes"] / GIB for r in runs if r["variant"] == variant
                }
                row[f"{variant}_peak_gib"] = extrapolate(points, tokens)
                row[f"{variant}_measured"] = False
        row["peak_ratio"] = row["chunked_peak_gib"] / row["unchunked_peak_gib"]
        if "unchunked_cpu_s" in row and "chunked_cpu_s" in row:
            row["cpu_time_ratio"] = row["chunked_cpu_s"] / row["unchunked_cpu_s"]
            row["wall_time_ratio"] = row["chunked_wall_s"] / row["unchunked_wall_s"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'N':>6} {'chunked peak':>14} {'unchunked peak':>16} {'ratio':>7} {'chunked s':>10} {'unchunked s':>12} {'time ratio':>11}"
    )
    for row in rows:
        marks = {v: "" if row[f"{v}_measured"] else " (extrap.)" for v in VARIANTS}
        chunked_s = f"{row['chunked_cpu_s']:.2f}" if "chunked_cpu_s" in row else "-"
        unchunked_s = f"{row['unchunked_cpu_s']:.2f}" if "unchunked_cpu_s" in row else "-"
        ratio = f"{row['cpu_time_ratio']:.3f}" if "cpu_time_ratio" in row else "-"
        print(
            f"{row['tokens']:>6} {row['chunked_peak_gib']:>9.2f} GiB{marks['chunked']}"
            f" {row['unchunked_peak_gib']:>11.2f} GiB{marks['unchunked']} {row['peak_ratio']:>7.3f}"
            f" {chunked_s:>10} {unchunked_s:>12} {ratio:>11}"
        )
    print("times: median process CPU seconds of forward + backward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--target", type=int, default=16384, help="the N the targets are about")
    p.add_argument("--both", default="2048,4096", help="N measured for both variants")
    p.add_argument("--chunked-only", default="8192", help="N measured for the chunked variant only")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.target, args.both, args.chunked_only, args.repeats = (
            32000,
            1024,
            "256,512",
            "1024",
            2,
        )
        args.out = args.out or str(Path(tempfile.gettempdir()) / RESULTS.name)
    args.out = Path(args.out or RESULTS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        variant, tokens = args.child
        print(json.dumps(child(variant, int(tokens), args.vocab, args.repeats, args.threads)))
        return {}
    from bench.ab_timing import machine, write_results

    both = [int(n) for n in args.both.split(",") if n]
    chunked_only = [int(n) for n in args.chunked_only.split(",") if n]
    runs = []
    for tokens in both:
        for variant in VARIANTS if tokens % 2 == 0 else VARIANTS[::-1]:
            runs.append(run_child(variant, tokens, args))
    runs += [run_child("chunked", tokens, args) for tokens in chunked_only]
    rows = summarize(runs, args.target)
    print_table(rows)
    results = {
        "method": "fresh subprocess per run; high-water mark reset (clear_refs 5) after the bf16 inputs are "
        "filled; peak = VmHWM after forward + backward minus VmRSS before; times = median of --repeats "
        "forward + backward",
        "config": {
            "vocab": args.vocab,
            "kind": "forward_kl",
            "temperature": 2.0,
            "logits_dtype": "bfloat16 (student and teacher)",
            "compute_dtype": "float32",
            "mask": None,
            "threads": args.threads,
            "repeats": args.repeats,
            "chunk_tokens": "default",
        },
        "rows": rows,
        "runs": runs,
        "machine": machine(),
        "torch": torch.__version__,
    }
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
