"""What a sweep leaves behind: `sweep_results.csv` (one row per trial) and `best_config.yaml`.

Rows are built from the Tune experiment on disk, so they can be written again for a resumed or
interrupted sweep. Each trial's stop reason is one of:

  completed         ran to train.max_steps
  eval_train_ratio  stopped by EvalTrainRatioStopper (replayed on its results, orchestrator.sweep.stoppers)
  scheduler         stopped early by the scheduler (ASHA / HyperBand / PBT)
  error             the trial failed
  interrupted       the sweep stopped before the trial finished (`raydistill sweep --resume DIR`)
  not_started       no result yet
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import Config, config_from_dict
from orchestrator.sweep.layout import CONFIG_PREFIX, EVAL_METRIC, START_STEP, TRIALS_DIR, TUNE_DIR
from orchestrator.sweep.stoppers import would_stop
from orchestrator.sweep.trials import apply_params, sampled_params

RESULTS_CSV = "sweep_results.csv"
BEST_CONFIG = "best_config.yaml"
# steps: the last step the trial reached; start_step: where its first Train run began (> 0 when it
# started from a phase-1 prefix it shares with other trials, orchestrator.sweep.shared_prefix).
SUMMARY_COLUMNS = (
    "final_eval_ppl",
    "best_eval_ppl",
    "eval_train_ratio",
    "steps",
    "start_step",
    "stop_reason",
)


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's trial status: TERMINATED, ERROR, PENDING, RUNNING, PAUSED
    params: dict[str, Any]  # sampled values under their dotted config keys
    results: list[dict[str, Any]] = field(default_factory=list)  # Tune results, in order
    steps: int = 0  # optimizer steps the trial ran (its metrics.jsonl, else its last result)


@dataclass
class SweepSummary:
    run_dir: Path
    rows: list[dict[str, Any]]
    param_keys: list[str]
    best: dict[str, Any] | None
    best_config: Config | None


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def effective_params(record: TrialRecord) -> dict[str, Any]:
    """The trial's sampled values, as last trained (the driver reports them as `config/<key>`)."""
    params = dict(record.params)
    if record.results:
        last = record.results[-1]
        for key in params:
            if CONFIG_PREFIX + key in last:
                params[key] = last[CONFIG_PREFIX + key]
    return params


def stop_reason(record: TrialRecord, max_steps: int, max_ratio: float, grace_evals: int) -> str:
    if record.status == "ERROR":
        return "error"
    if not record.results:
        return "not_started"
    if record.status != "TERMINATED":
        return "interrupted"
    if int(record.results[-1].get("step", 0)) >= max_steps:
        return "completed"
    if would_stop(record.results, max_ratio, grace_evals):
        return "eval_train_ratio"
    return "scheduler"


def trial_row(record: TrialRecord, max_steps: int, max_ratio: float, grace_evals: int) -> dict[str, Any]:
    ppls = [_float(r.get(EVAL_METRIC)) for r in record.results]
    ppls = [p for p in ppls if math.isfinite(p)]
    last = record.results[-1] if record.results else {}
    first = record.results[0] if record.results else {}
    return {
        "trial_id": record.trial_id,
        **effective_params(record),
        "final_eval_ppl": ppls[-1] if ppls else math.nan,
        "best_eval_ppl": min(ppls) if ppls else math.nan,
        "eval_train_ratio": _float(last.get("eval_train_ratio")),
        "steps": record.steps,
        "start_step": int(first.get(START_STEP, 0)),
        "stop_reason": stop_reason(record, max_steps, max_ratio, grace_evals),
    }


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial to recommend: lowest final eval ppl among trials that ran to the end (what
    `raydistill train` with its config would give); if none did, lowest best ppl of any trial."""
    completed = [r for r in rows if r["stop_reason"] == "completed" and math.isfinite(r["final_eval_ppl"])]
    if completed:
        return min(completed, key=lambda r: r["final_eval_ppl"])
    others = [r for r in rows if r["stop_reason"] != "error" and math.isfinite(r["best_eval_ppl"])]
    return min(others, key=lambda r: r["best_eval_ppl"]) if others else None


def write_results_csv(path: Path, rows: list[dict[str, Any]], param_keys: list[str]) -> None:
    columns = ["trial_id", *param_keys, *SUMMARY_COLUMNS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def best_config(base: dict[str, Any], best: dict[str, Any], param_keys: list[str]) -> Config:
    return config_from_dict(apply_params(base, {k: best[k] for k in param_keys if k in best}))


def write_best_config(path: Path, config: Config, best: dict[str, Any], param_keys: list[str], where: str):
    sampled = ", ".join(f"{k}={best[k]}" for k in param_keys)
    header = (
        f"# Best config of the sweep in {where}: trial {best['trial_id']}, eval ppl "
        f"{best['final_eval_ppl']:.4g} (best {best['best_eval_ppl']:.4g}) after {best['steps']} steps "
        f"({best['stop_reason']}).\n"
        f"# Sampled: {sampled}\n"
        f"#   raydistill train --config {path} --run-dir runs/best\n"
    )
    path.write_text(header + config.to_yaml())


# ---------------------------------------------------------------------------------------------
# Reading a Tune experiment from disk.


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_trials(run_dir: Path) -> list[TrialRecord]:
    from ray.tune import ExperimentAnalysis

    from orchestrator.train.telemetry import METRICS_FILE

    analysis = ExperimentAnalysis(str(run_dir / TUNE_DIR))
    records = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        results = _read_jsonl(Path(trial.path) / "result.json")
        metrics = _read_jsonl(run_dir / TRIALS_DIR / trial.trial_id / METRICS_FILE)
        steps = [int(r["step"]) for r in metrics + results if "step" in r]
        records.append(
            TrialRecord(
                trial_id=trial.trial_id,
                status=str(trial.status),
                params=sampled_params(trial.config),
                results=results,
                steps=max(steps) if steps else 0,
            )
        )
    return records


def summarize(run_dir: Path, base: dict[str, Any], settings) -> SweepSummary:
    """Write sweep_results.csv and best_config.yaml for the sweep in `run_dir`; return the summary."""
    records = collect_trials(run_dir)
    param_keys: list[str] = []
    for record in records:
        param_keys += [k for k in record.params if k not in param_keys]
    max_steps = int(base["train"]["max_steps"])
    rows = [
        trial_row(r, max_steps, settings.max_eval_train_ratio, settings.ratio_grace_evals) for r in records
    ]
    write_results_csv(run_dir / RESULTS_CSV, rows, param_keys)
    best = pick_best(rows)
    config = None
    if best is not None:
        config = best_config(base, best, param_keys)
        write_best_config(run_dir / BEST_CONFIG, config, best, param_keys, str(run_dir))
    return SweepSummary(run_dir, rows, param_keys, best, config)


def format_table(summary: SweepSummary) -> str:
    """A plain-text table of the trials, best first."""
    keys = summary.param_keys
    header = ["trial", *keys, "final ppl", "best ppl", "ratio", "steps", "from step", "stop reason"]
    ordered = sorted(summary.rows, key=lambda r: (math.isnan(r["final_eval_ppl"]), r["final_eval_ppl"]))
    body = [
        [
            r["trial_id"],
            *(str(r.get(k, "")) for k in keys),
            f"{r['final_eval_ppl']:.4g}",
            f"{r['best_eval_ppl']:.4g}",
            f"{r['eval_train_ratio']:.3g}",
            str(r["steps"]),
            str(r["start_step"]),
            r["stop_reason"],
        ]
        for r in ordered
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    return "\n".join(lines)


def read_results_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
