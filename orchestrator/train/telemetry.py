"""Driver-side telemetry: `metrics.jsonl` in the run dir and one readable console line per report.

`MetricsCallback` is a Ray Train `UserCallback`: it runs in the Train controller after every
`ray.train.report`, receives rank 0's (already all-reduced) record and appends it to the run's
metrics.jsonl. After a resume or a worker restart, steps are reported again from the last
checkpoint; records at or past such a step are dropped from the file first, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from orchestrator.report.format import duration, fmt

# The loss parts' names live with the schedule (pure python, no torch: cheap to import here).
from workers.curriculum import COMPONENTS

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            # A driver killed while appending leaves half a last line: that step is reported again on resume.
    return records


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl in one step (temp file, then rename): a crash mid-write loses nothing."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def shows_phases(config: Any) -> bool:
    """Whether the console speaks of curriculum phases: only when a curriculum schedules the loss
    parts (a run without a teacher, or with the curriculum disabled, sits in phase 3 throughout)."""
    return bool(config.curriculum.enabled) and config.teacher != "none"


def progress_line(record: dict[str, Any], eta_s: float | None, phases: bool = True) -> str:
    """One console line per report; `phases=False` (no curriculum) leaves out the `[phase N]` tag."""
    step, total = record["step"], record["max_steps"]
    parts = " + ".join(
        f"{c} {fmt(record.get(f'loss/{c}/scaled', 0.0))}"
        for c in COMPONENTS
        if record.get(f"loss/{c}/weight", 0) > 0
    )
    line = f"[phase {record['phase']}] " if phases else ""
    line += f"step {step}/{total} ({100 * step / total:.0f}%)"
    if "loss/total" in record:
        line += f" | loss {fmt(record['loss/total'])} = {parts}"
    else:
        line += " | step skipped (non-finite)"
    if "eval/ppl" in record:
        line += f" | eval ppl {fmt(record['eval/ppl'])} ratio {fmt(record.get('eval_train_ratio'))}"
    # Scientific notation: a warm-up lr of 7.96e-6 must not print as 0.00.
    line += f" | lr {record['lr']:.2e} | {record.get('tokens_per_s', 0):,.0f} tok/s"
    share = record.get("trained_share", 1.0)
    if share < 1.0:  # a loss mask (chat, completions, padding): say how much of that carries a loss
        line += f" ({math.floor(100 * share)}% trained)"  # floored: 99.7% must not read as all
    if record.get("nonfinite_skipped"):
        line += f" | skipped {record['nonfinite_skipped']}"
    if eta_s is not None:
        line += f" | eta {duration(eta_s)}"
    return line


def phase_announcement(record: dict[str, Any]) -> str:
    # Printed at the first *logged* step of a phase, which may be up to log_every steps after the
    # phase began (or the run's first log, for a run that starts mid-schedule): "in phase N at step X".
    weights = ", ".join(f"{c}={record.get(f'loss/{c}/weight', 0.0):.3g}" for c in COMPONENTS)
    return f"== in phase {record['phase']} at step {record['step']} (progress {record['progress']:.2f}): {weights}"


def ledger(record: dict[str, Any], prefix: str = "loss") -> str:
    rows = [f"  {'part':<10} {'raw':>12} {'weight':>8} {'scaled':>12}"]
    total = 0.0
    for c in COMPONENTS:
        raw, weight, scaled = (record.get(f"{prefix}/{c}/{k}", 0.0) for k in ("raw", "weight", "scaled"))
        total += scaled
        rows.append(f"  {c:<10} {raw:>12.5g} {weight:>8.3g} {scaled:>12.5g}")
    rows.append(
        f"  {'sum':<10} {'':>12} {'':>8} {total:>12.5g}   reported total {record.get(prefix + '/total', 0.0):.5g}"
    )
    return "\n".join(rows)


class MetricsCallback(UserCallback):
    """`phases=False` (see `shows_phases`) keeps phase words off the console; metrics.jsonl keeps
    its `phase` field either way."""

    def __init__(self, run_dir: str, debug_every: int = 0, echo: bool = True, phases: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.debug_every = debug_every
        self.echo = echo
        self.phases = phases
        self._last_phase: int | None = None
        self._last_step: int | None = None  # the last step in metrics.jsonl, read once per driver
        self._start: tuple[float, int] | None = None

    def _append(self, record: dict[str, Any]) -> None:
        if self._last_step is None:
            # This driver's first report: what an earlier run of this run dir left (a resume).
            records = read_metrics(self.path)
            if self.path.exists() and not self.path.read_bytes().endswith(b"\n"):
                write_metrics(self.path, records)  # drop a half-written last line before appending
            self._last_step = records[-1]["step"] if records else 0
            if self._last_phase is None and records:
                self._last_phase = records[-1]["phase"]
        if record["step"] <= self._last_step:
            # Replayed after a resume or a worker restart: keep only what came before this step.
            write_metrics(self.path, [r for r in read_metrics(self.path) if r["step"] < record["step"]])
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._last_step = record["step"]

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        record = {k: v for k, v in metrics[0].items() if not k.startswith("_")}
        if "step" not in record:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._append(record)
        if not self.echo:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = (now, record["step"])
        t0, s0 = self._start
        done = record["step"] - s0
        end = record.get("stop_step", record["max_steps"])  # a shared prefix stops before max_steps
        eta = (now - t0) / done * (end - record["step"]) if done > 0 else None
        if self.phases and record["phase"] != self._last_phase:
            print(phase_announcement(record), flush=True)
            self._last_phase = record["phase"]
        print(progress_line(record, eta, self.phases), flush=True)
        if record.get("nonfinite_components"):
            print(f"   non-finite loss in: {record['nonfinite_components']} (step skipped)", flush=True)
        if self.debug_every and record["step"] % self.debug_every == 0 and "loss/total" in record:
            print(ledger(record), flush=True)
