"""Which `checkpoint_*` dirs of a run dir Ray Train will resume from.

Ray Train 2.60 registers a checkpoint in `checkpoint_manager_snapshot.json` only once every rank has
copied its part into the dir, and resumes only from what that file lists. A dir it does not list is one
a crash cut short while it was being written (or one Ray dropped under `num_to_keep` just before a
crash stopped the deletion): Ray never reads it, so the driver must not either, or a half-copied
state file would block the resume that Ray itself would make from the last complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import UserError

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_GLOB = "checkpoint_*"


def registered_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint dirs Ray's snapshot lists, oldest first (none without a snapshot: Ray then
    starts from step 0)."""
    snapshot = run_dir / SNAPSHOT_FILE
    if not snapshot.exists():
        return []
    try:
        state = json.loads(snapshot.read_text())
        names = [result["checkpoint_dir_name"] for result in state["checkpoint_results"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        # Ray writes this file in place; a crash mid-write leaves it cut short, and Ray would then
        # stop with a CheckpointManagerInitializationError traceback inside its controller.
        raise UserError(
            f"{snapshot}: unreadable ({type(exc).__name__}: {exc}); Ray's list of this run's "
            "checkpoints is damaged, so it cannot resume; use another --run-dir"
        ) from None
    return [run_dir / name for name in names]


def unregistered_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint_*` dirs Ray's snapshot does not list: written only in part, never resumed from."""
    registered = set(registered_checkpoints(run_dir))
    return sorted(p for p in run_dir.glob(CHECKPOINT_GLOB) if p.is_dir() and p not in registered)
