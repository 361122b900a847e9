"""Interleaved A/B step timing shared by the bench scripts.

This machine is noisy (other work, frequency changes), so arms are never timed one after the
other: within each round every group times each arm for one block of steps, the arms' order
flipping every round, and arms are compared by per-round paired ratios, not by overall means.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import median, paired_summary

CLOCKS = ("wall", "cpu")  # perf_counter, and this process's CPU time (robust to a loaded machine)

Key = tuple[str, Any, str]  # (clock, group, arm)


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - start, time.process_time() - cpu


def assert_stepped(result) -> None:
    """A timed `workers.step.train_step` must have been a real step, not a skipped non-finite one."""
    assert not result.skipped, result.nonfinite


def interleaved_rounds(
    groups: Sequence[Any],
    arms: Sequence[str],
    step: Callable[[Any, str, Any], tuple[float, float]],
    windows: Sequence[Any],
    rounds: int,
    warmup: int,
    after_block: Callable[[Any, str], None] | None = None,
) -> tuple[dict[Key, list[float]], list[dict[Key, float]]]:
    """Time `step(group, arm, window) -> (wall, cpu)` over `windows` per block.

    Returns every timed step by (clock, group, arm), and per round the block medians by the same
    key. `after_block(group, arm)` runs after each timed block (for a measurement of its own)."""
    for group in groups:
        for arm in arms:
            for _ in range(warmup):
                step(group, arm, windows[0])
    samples: dict[Key, list[float]] = {}
    blocks: list[dict[Key, float]] = []
    for r in range(rounds):
        block: dict[Key, float] = {}
        for group in groups:
            for arm in arms if r % 2 == 0 else arms[::-1]:
                measured = [step(group, arm, window) for window in windows]
                for i, clock in enumerate(CLOCKS):
                    values = [m[i] for m in measured]
                    samples.setdefault((clock, group, arm), []).extend(values)
                    block[(clock, group, arm)] = median(values)
                if after_block is not None:
                    after_block(group, arm)
        blocks.append(block)
        cells = ", ".join(f"{g} {a} {block[('cpu', g, a)] * 1e3:.0f} ms cpu" for g in groups for a in arms)
        print(f"round {r + 1}/{rounds}: {cells}", flush=True)
    return samples, blocks


def arm_summary(
    samples: dict[Key, list[float]], blocks: list[dict[Key, float]], group: Any, arm: str, base: str
) -> dict[str, Any]:
    """Median step of `arm` and `base` on each clock, and `arm / base` as paired per-round ratios."""
    entry: dict[str, Any] = {}
    for clock in CLOCKS:
        for name in (base, arm):
            entry[f"{name}_step_{clock}_s"] = median(samples[(clock, group, name)])
        entry[f"{arm}_over_{base}_{clock}"] = paired_summary(
            [b[(clock, group, arm)] / b[(clock, group, base)] for b in blocks]
        )
    return entry


def ci_text(summary: dict[str, Any]) -> str:
    """A paired ratio as "0.950 [0.932, 1.042]": its median and bootstrap 95% interval."""
    low, high = summary["ci95"]
    return f"{summary['median']:.3f} [{low:.3f}, {high:.3f}]"


def machine() -> dict[str, str]:
    return {"platform": platform.platform(), "processor": platform.processor()}


def write_results(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
