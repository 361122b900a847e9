"""Which checkpoint dirs a resume may use: only those Ray Train registered in its snapshot; and the temp
checkpoint dirs that killed workers leave behind are removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.train.checkpoint_check import recorded_checkpoints
from orchestrator.train.ray_checkpoints import SNAPSHOT_FILE, registered_checkpoints, unregistered_checkpoints
from workers.checkpointing import STATE_FILE, TEMP_PREFIX, remove_orphaned_temp_checkpoints

COMPLETE = "checkpoint_2026-01-01_00-00-01.000000"
HALF = "checkpoint_2026-01-01_00-00-02.000000"


def write_run_dir(run_dir: Path) -> None:
    """A complete, registered checkpoint and a newer one a crash cut short: its state file is half
    written and Ray's snapshot (written only after every rank has copied its part) does not list it."""
    state = json.dumps({"step": 4, "tag": "step_00000004", "param_shapes": {"w": [2, 3]}})
    (run_dir / COMPLETE).mkdir(parents=True)
    (run_dir / COMPLETE / STATE_FILE).write_text(state)
    (run_dir / HALF).mkdir()
    (run_dir / HALF / STATE_FILE).write_text(state.replace("4", "8")[: len(state) // 2])
    snapshot = {"ray_version": "2.60.0", "checkpoint_results": [{"checkpoint_dir_name": COMPLETE}]}
    (run_dir / SNAPSHOT_FILE).write_text(json.dumps(snapshot))


def test_only_checkpoints_in_rays_snapshot_are_registered(tmp_path):
    write_run_dir(tmp_path)
    assert registered_checkpoints(tmp_path) == [tmp_path / COMPLETE]
    assert unregistered_checkpoints(tmp_path) == [tmp_path / HALF]


def test_a_half_written_unregistered_checkpoint_does_not_block_the_shape_check(tmp_path):
    write_run_dir(tmp_path)
    assert recorded_checkpoints(tmp_path) == [(tmp_path / COMPLETE, {"w": [2, 3]})]


def test_without_a_snapshot_nothing_is_resumed_from(tmp_path):
    (tmp_path / COMPLETE).mkdir()
    assert registered_checkpoints(tmp_path) == []
    assert unregistered_checkpoints(tmp_path) == [tmp_path / COMPLETE]


def test_a_snapshot_cut_short_is_refused_naming_the_file(tmp_path):
    write_run_dir(tmp_path)
    snapshot = tmp_path / SNAPSHOT_FILE
    snapshot.write_text(snapshot.read_text()[:40])
    with pytest.raises(UserError, match=f"{snapshot}: unreadable .*use another --run-dir"):
        registered_checkpoints(tmp_path)


def test_a_registered_checkpoint_that_is_gone_is_refused(tmp_path):
    write_run_dir(tmp_path)
    (tmp_path / COMPLETE / STATE_FILE).unlink()
    (tmp_path / COMPLETE).rmdir()
    with pytest.raises(UserError, match=f"checkpoint {tmp_path / COMPLETE} is listed in .* but is gone"):
        recorded_checkpoints(tmp_path)


def test_temp_checkpoints_of_dead_workers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # exited: a worker killed before it could clean up
    orphan = tmp_path / f"{TEMP_PREFIX}{dead_pid}-abc123"
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-def456"
    other = tmp_path / "unrelated-dir"
    for directory in (orphan, live, other):
        (directory / "step_00000004").mkdir(parents=True)
        (directory / "step_00000004" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1024)
    assert remove_orphaned_temp_checkpoints(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and other.exists()
