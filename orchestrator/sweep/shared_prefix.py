"""Sweep trials whose curricula start alike train their common start once.

Every trial of a curriculum sweep begins in phase 1 (ce + kd only). Two trials whose configs differ
only in their phase boundaries are the same run until the earlier of their phase-1 ends: same seed,
data order, lr schedule and loss weights. `raydistill sweep` therefore trains that phase-1 prefix once
per group of such trials (a "prefix run": phase 1 throughout, stopped at the latest phase-1 end of the
group, with a checkpoint at each trial's phase-1 end) and starts each trial from the checkpoint at
its own phase-1 end. That saves the repeated steps and changes nothing else: before its Train run
starts, a forked trial reports to Tune the prefix run's evals up to its fork (the results it would
have reported itself), so the scheduler and the ratio stopper see every trial at its true steps.
(Without the replay ASHA judges a forked trial's first result at an earlier rung, a bias measured in
BENCHMARKS.md, "Shared phase-1 prefix".)

Only for schedulers that stop trials (ASHA, FIFO): PBT and HyperBand restart trials from Tune
checkpoints, which the replayed results do not carry.

A checkpoint resumes exactly (tests/test_train_e2e.py), so a forked trial trains the same model as its
config run from step 0; tests/test_shared_prefix.py checks it on a real sweep.

Layout under the sweep's run dir:
  prefixes/<key>/run/     the prefix run (Ray Train checkpoints, one per fork step)
  prefixes/<key>/metrics.jsonl
  prefixes.json           {key: {"config": ..., "fork_steps": [...], "checkpoints": {step: path}}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import Config, config_from_dict
from orchestrator.errors import root_cause
from orchestrator.sweep.layout import EVAL_METRIC
from workers.curriculum import schedule_from_config

if TYPE_CHECKING:
    from orchestrator.train.trainer import PreparedRun

BOUNDARY_KEYS = ("phase1_end", "phase2_end")
PREFIX_DIR = "prefixes"
TABLE_FILE = "prefixes.json"
# Train sections that do not change what a step computes (how often to log, save, keep).
BOOKKEEPING_KEYS = ("log_every", "checkpoint_every", "checkpoints_to_keep", "debug_every")


def phase1_steps(config: Config) -> int:
    """Steps from 0 trained in phase 1: step k (0-based) trains at progress k / max_steps, as the
    worker loop does, and is in phase 1 when that progress is below curriculum.phase1_end."""
    resolved = config.to_dict()
    schedule = schedule_from_config(resolved["curriculum"], resolved["loss"])
    max_steps = config.train.max_steps
    steps = 0
    while steps < max_steps and schedule.phase(steps / max_steps) == 1:
        steps += 1
    return steps


def prefix_key(config: Config) -> str:
    """Trials with the same key run the same phase 1: the config without its phase boundaries and
    bookkeeping. A short hash, used as a directory name."""
    data = config.to_dict()
    for key in BOUNDARY_KEYS:
        data["curriculum"].pop(key)
    for key in BOOKKEEPING_KEYS:
        data["train"].pop(key)
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class PrefixRun:
    """One phase-1 prefix shared by a group of trials."""

    key: str
    config: dict[str, Any]  # the group's config with phase 1 throughout, checkpoints at fork steps
    fork_steps: list[int]  # sorted; the run stops at the last one
    trials: int  # how many trials start from it
    checkpoints: dict[int, str] = field(default_factory=dict)  # fork step -> checkpoint dir, once trained

    @property
    def steps(self) -> int:
        return self.fork_steps[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "fork_steps": self.fork_steps,
            "trials": self.trials,
            "checkpoints": {str(k): v for k, v in self.checkpoints.items()},
        }

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> PrefixRun:
        checkpoints = {int(k): v for k, v in data.get("checkpoints", {}).items()}
        fork_steps = [int(s) for s in data["fork_steps"]]
        return cls(key, data["config"], fork_steps, int(data["trials"]), checkpoints)


def prefix_config(config: Config, fork_steps: list[int]) -> Config:
    """`config` trained in phase 1 until its last fork step, with a checkpoint kept at every one."""
    data = config.to_dict()
    # p1 == p2 == 1: every step of the run is in phase 1 (progress < 1).
    data["curriculum"].update(phase1_end=1.0, phase2_end=1.0)
    data["train"]["checkpoints_to_keep"] = len(fork_steps)
    data["train"]["checkpoint_every"] = data["train"]["max_steps"]  # only the fork steps are saved
    return config_from_dict(data)


def plan_prefixes(configs: list[Config]) -> list[PrefixRun]:
    """The prefix runs worth training for these trial configs.

    A group shares a prefix when at least two of its trials start with a phase 1 (curriculum on,
    phase1_end > 0): training it once saves every step but the longest trial's. A trial alone in
    its group, or with no phase 1, starts from step 0 as before.
    """
    groups: dict[str, list[Config]] = {}
    for config in configs:
        if phase1_steps(config) > 0:
            groups.setdefault(prefix_key(config), []).append(config)
    plans = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        fork_steps = sorted({phase1_steps(c) for c in members})
        config = prefix_config(members[0], fork_steps).to_dict()
        plans.append(PrefixRun(key, config, fork_steps, len(members)))
    return plans


def steps_saved(configs: list[Config]) -> int:
    """Steps prefix sharing saves these trials if each runs to the end: every member's phase-1 steps
    but the longest, per prefix run."""
    saved = 0
    for run in plan_prefixes(configs):
        members = [phase1_steps(c) for c in configs if prefix_key(c) == run.key and phase1_steps(c) > 0]
        saved += sum(members) - run.steps
    return saved


def fork_point(config: Config, table: dict[str, PrefixRun]) -> tuple[str, int] | None:
    """(checkpoint dir, step) a trial with this config starts from, or None to start from step 0."""
    steps = phase1_steps(config)
    if steps == 0:
        return None
    run = table.get(prefix_key(config))
    if run is None or steps not in run.checkpoints:
        return None
    return run.checkpoints[steps], steps


def prefix_evals(sweep_dir: Path, config: Config, fork_step: int) -> list[dict[str, Any]]:
    """The prefix run's eval records up to `fork_step`: the results a trial forking there would have
    reported itself had it trained from step 0 (its steps up to the fork are the prefix's steps)."""
    from orchestrator.train.telemetry import METRICS_FILE, read_metrics

    records = read_metrics(sweep_dir / PREFIX_DIR / prefix_key(config) / METRICS_FILE)
    return [r for r in records if EVAL_METRIC in r and r["step"] <= fork_step]


def read_table(sweep_dir: Path) -> dict[str, PrefixRun]:
    path = sweep_dir / TABLE_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {key: PrefixRun.from_dict(key, value) for key, value in data.items()}


def write_table(sweep_dir: Path, table: dict[str, PrefixRun]) -> None:
    path = sweep_dir / TABLE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v.to_dict() for k, v in table.items()}, indent=2))
    tmp.replace(path)


def checkpoints_by_step(run_dir: Path) -> dict[int, str]:
    """Ray Train checkpoint dirs of a finished prefix run, by the step each holds (only those Ray
    registered: a dir a crash cut short is never a trial's starting point)."""
    from orchestrator.train.ray_checkpoints import registered_checkpoints
    from workers.checkpointing import STATE_FILE, read_state

    found = {}
    for directory in registered_checkpoints(run_dir):
        if (directory / STATE_FILE).exists():
            found[int(read_state(directory)["step"])] = str(directory.resolve())
    return found


def train_prefix(run: PrefixRun, sweep_dir: Path, prepared: PreparedRun) -> PrefixRun:
    """Train one prefix run (or finish an interrupted one: Ray Train resumes the same run dir) and
    return it with its checkpoints filled in."""
    from orchestrator.train.run import TrainingFailed
    from orchestrator.train.telemetry import MetricsCallback
    from orchestrator.train.trainer import build_trainer

    config = config_from_dict(run.config)
    root = sweep_dir / PREFIX_DIR / run.key
    run_dir = root / "run"
    prefix = replace(prepared, config=config.to_dict()).with_runtime(
        student_dir=str(root / "student"),  # never written: a prefix run stops before the end
        stop_at_step=run.steps,
        checkpoint_steps=tuple(run.fork_steps),
    )
    trainer = build_trainer(
        config,
        run_dir,
        prefix,
        callbacks=[MetricsCallback(str(root))],  # its progress line: no Tune table yet
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; show the root cause in one line
        raise TrainingFailed(f"the trials' shared phase-1 prefix failed: {root_cause(exc)}") from exc
    checkpoints = checkpoints_by_step(run_dir)
    missing = [s for s in run.fork_steps if s not in checkpoints]
    if missing:
        raise RuntimeError(f"prefix run {run_dir} ended without checkpoints at steps {missing}")
    found = {s: checkpoints[s] for s in run.fork_steps}
    return PrefixRun(run.key, run.config, run.fork_steps, run.trials, found)


def train_prefixes(sweep_dir: Path, prepared: PreparedRun) -> dict[str, PrefixRun]:
    """Train every prefix run of the sweep's table not trained yet; return the table."""
    table = read_table(sweep_dir)
    for key, run in table.items():
        if run.checkpoints:
            continue
        print(
            f"raydistill: {run.trials} trials share phase 1: training its first {run.steps} steps once "
            f"(trials start at steps {', '.join(map(str, run.fork_steps))})",
            flush=True,
        )
        table[key] = train_prefix(run, sweep_dir, prepared)
        write_table(sweep_dir, table)
    return table


def prefix_steps(sweep_dir: Path) -> int:
    """Optimizer steps the sweep's prefix runs trained (each once, shared by their trials)."""
    return sum(run.steps for run in read_table(sweep_dir).values() if run.checkpoints)
