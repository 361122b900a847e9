"""One run = one directory: the resolved config, metrics.jsonl, Ray Train's checkpoints, `student/`.

Rerunning with the same run dir resumes; a run dir holding an incompatible run (or something that
is not a raydistill run) is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import Config
from orchestrator.dotted import flatten
from orchestrator.errors import UserError

CONFIG_FILE = "config.yaml"
# Keys that may change between a run and its resume without changing what is trained.
RESUMABLE_CHANGES = {
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.checkpoints_to_keep",
    "train.debug_every",
    "train.max_nonfinite_in_a_row",
    "train.attn_implementation",  # a kernel choice: the same math, so a resume may switch it
    "scaling.max_failures",
    "scaling.cpus_per_worker",
    "data.cache_dir",
}


def incompatible_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))


def prepare_run_dir(run_dir: Path, config: Config) -> bool:
    """Create or validate `run_dir`; write config.yaml. Returns True when resuming an earlier run."""
    resuming = check_run_dir(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    return resuming


def check_run_dir(run_dir: Path, config: Config) -> bool:
    """`prepare_run_dir`'s checks, writing nothing: True when `run_dir` holds this run to resume."""
    config_path = run_dir / CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a directory")
    resuming = False
    if config_path.exists():
        try:
            old = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UserError(f"{config_path} is not valid YAML; refusing to reuse {run_dir}") from None
        if not isinstance(old, dict):
            raise UserError(f"{config_path} is not a raydistill config; refusing to reuse {run_dir}")
        diff = incompatible_keys(old, config.to_dict())
        if diff:
            shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
            raise UserError(
                f"{run_dir} holds a different run (config differs in {shown}); use another --run-dir"
            )
        resuming = True
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(
            f"{run_dir} is not empty and holds no raydistill run (no {CONFIG_FILE}); use another --run-dir"
        )
    return resuming
