"""Fault injection for the end-to-end tests: a worker crash at a step or halfway through copying a
checkpoint into the run dir, a worker paused at a step (so a test can take its node away at a known
point), or NaN teacher logits.

Only active when the driver sets `WorkerRuntime.faults` (tests do, through `run_training(faults=...)`;
the CLI never does). It exercises the real recovery paths: Ray Train's FailureConfig restart from
the last checkpoint, and the skipping of non-finite steps (a NaN must never reach the optimizer).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workers.checkpointing import STATE_FILE


class FaultInjector:
    def __init__(self, faults: dict[str, Any] | None, rank: int):
        faults = faults or {}
        self.crash_at_step = faults.get("crash_at_step")
        self.crash_rank = int(faults.get("crash_rank", 1))
        self.crash_marker = faults.get("crash_marker")
        self.crash_in_checkpoint_at_step = faults.get("crash_in_checkpoint_at_step")
        self.nan_teacher_steps = set(faults.get("nan_teacher_steps", []))
        self.pause_at_step = faults.get("pause_at_step")
        self.pause_rank = int(faults.get("pause_rank", 0))
        self.pause_marker = faults.get("pause_marker")
        self.pause_timeout_s = float(faults.get("pause_timeout_s", 120.0))
        # Rank 0 appends the number of each step it starts: shows which steps a restart ran again.
        self.step_log = faults.get("step_log")
        self.rank = rank
        self.current_step = 0

    def attach(self, teacher: torch.nn.Module | None) -> None:
        if teacher is not None and self.nan_teacher_steps:
            teacher.register_forward_hook(self._poison_logits)

    def _poison_logits(self, module, args, output):
        if self.current_step in self.nan_teacher_steps:
            output.logits = torch.full_like(output.logits, float("nan"))
        return output

    def after_step(self) -> None:
        self.current_step = 0  # evals after the step see a healthy teacher

    def before_step(self, step: int) -> None:
        """`step` is the 1-based number of the step about to run."""
        self.current_step = step
        self._maybe_pause(step)
        if self.step_log and self.rank == 0:
            with open(self.step_log, "a") as f:
                f.write(f"{step}\n")
        if self.crash_at_step is None or step != self.crash_at_step or self.rank != self.crash_rank:
            return
        self._crash_once()

    def _crash_once(self) -> None:
        marker = Path(self.crash_marker)
        if marker.exists():
            return  # crash only once, so the restarted run goes through
        marker.write_text("crashed\n")
        # SIGKILL, not an exception or os._exit: no Python cleanup, no atexit, no flushed buffers;
        # the process is gone the way an OOM kill or a lost node leaves it.
        os.kill(os.getpid(), signal.SIGKILL)

    def _maybe_pause(self, step: int) -> None:
        """Before `pause_at_step`, `pause_rank` writes its Ray node id to `pause_marker` and sleeps (the
        other ranks wait for it in the step's first collective): the test removes that node meanwhile.
        Once only, like the crash: the restarted run finds the marker and goes through."""
        if self.pause_at_step is None or step != self.pause_at_step or self.rank != self.pause_rank:
            return
        marker = Path(self.pause_marker)
        if marker.exists():
            return
        import ray

        partial = marker.with_name(marker.name + ".tmp")  # renamed: the test never reads half an id
        partial.write_text(ray.get_runtime_context().get_node_id())
        partial.replace(marker)
        # Bounded, so a test whose node removal never lands fails on its own assertions, not a hang.
        time.sleep(self.pause_timeout_s)

    def checkpoint_upload_fn(self, step: int) -> Callable | None:
        """None (Ray's own copy into the run dir), or, at the chosen step on the crashing rank, a
        `ray.train.report(checkpoint_upload_fn=...)` that copies part of the checkpoint into the very
        directory Ray would fill and dies there: the run dir is left holding a checkpoint dir that Ray
        never registered, with the driver-visible state file cut in half."""
        if step != self.crash_in_checkpoint_at_step or self.rank != self.crash_rank:
            return None
        if Path(self.crash_marker).exists():
            return None
        return self._copy_half_then_crash

    def _copy_half_then_crash(self, checkpoint, checkpoint_dir_name: str):
        import ray.train

        storage = ray.train.get_context().get_storage()
        destination = Path(storage.build_checkpoint_path_from_name(checkpoint_dir_name))
        source = Path(checkpoint.path)
        # Everything but the state file first, so the cut falls where the driver reads.
        files = sorted((p for p in source.rglob("*") if p.is_file()), key=lambda p: p.name == STATE_FILE)
        for file in files:
            target = destination / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if file.name == STATE_FILE:
                data = file.read_bytes()
                target.write_bytes(data[: len(data) // 2])
            else:
                shutil.copyfile(file, target)
        self._crash_once()
