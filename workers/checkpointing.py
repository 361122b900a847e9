"""Save and restore a training position through Ray Train checkpoints holding DeepSpeed's own format.

Layout of one checkpoint directory (Ray merges the per-rank files into one `checkpoint_<ts>/`):
  latest, <tag>/ ...             DeepSpeed (module, ZeRO optimizer partitions, LR scheduler);
                                 `zero_to_fp32.py` consolidates it into a plain state dict
  raydistill_state.json          step, progress, max_steps, parameter shapes (rank 0)
  config.json                    the resolved run config (rank 0)
  worker_<rank>.json             data position of that rank
  rng_<rank>.pt                  torch RNG state of that rank (loaded with weights_only=True)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "raydistill_state.json"


@dataclass
class TrainingPosition:
    step: int = 0
    data: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "consumed": 0})
    nonfinite_skipped: int = 0
    tokens_trained: int = 0  # label tokens of every applied step, all ranks (the same on each)


def _tag(step: int) -> str:
    return f"step_{step:08d}"


TEMP_PREFIX = "raydistill-ckpt-"


def remove_orphaned_temp_checkpoints(temp_root: str | Path | None = None) -> list[Path]:
    """Delete the temp checkpoint dirs of dead worker processes on this node; return them.

    A worker killed while it held one (SIGKILL, OOM, a lost node coming back) never ran the clean-up,
    and each such dir is a full copy of that rank's checkpoint: a few crashes of a large model would
    fill the node's /tmp. The owner's pid is in the name, so a live worker's dir is never touched.
    This assumes the temp dir is not shared with processes of another pid namespace (two containers
    bind-mounting one /tmp), where a live worker's pid would look dead from here."""
    removed = []
    for directory in Path(temp_root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = directory.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextmanager
def saved_checkpoint(engine, position: TrainingPosition, config: dict[str, Any], rank: int, max_steps: int):
    """Write this rank's part of a checkpoint into a temp dir and yield it (to report, then delete)."""
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        # Every rank saves: ZeRO partitions are per rank; DeepSpeed writes the shared files on rank 0.
        engine.save_checkpoint(tmp, tag=_tag(position.step))
        directory = Path(tmp)
        (directory / f"worker_{rank}.json").write_text(json.dumps(position.data))
        torch.save(torch.get_rng_state(), directory / f"rng_{rank}.pt")
        if rank == 0:
            state = {
                "step": position.step,
                "progress": position.step / max_steps,
                "max_steps": max_steps,
                "nonfinite_skipped": position.nonfinite_skipped,
                "tokens_trained": position.tokens_trained,
                "tag": _tag(position.step),
                # Lets the driver refuse, before any worker starts, a model this checkpoint cannot load into.
                "param_shapes": parameter_shapes(engine.module),
            }
            (directory / STATE_FILE).write_text(json.dumps(state, indent=2))
            (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
        yield tmp


def restore(engine, checkpoint, rank: int) -> TrainingPosition:
    """Load DeepSpeed state, this rank's data position and RNG from a Ray Train checkpoint."""
    from workers.dist import barrier

    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        state = json.loads((directory / STATE_FILE).read_text())
        load_path, _ = engine.load_checkpoint(str(directory), tag=state["tag"])
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {directory} (tag {state['tag']})")
        data = json.loads((directory / f"worker_{rank}.json").read_text())
        rng_file = directory / f"rng_{rank}.pt"
        if rng_file.exists():
            torch.set_rng_state(torch.load(rng_file, weights_only=True))
        # Keep the directory alive until every rank has read it (it may be a shared download).
        barrier()
    return TrainingPosition(
        step=int(state["step"]),
        data=data,
        nonfinite_skipped=int(state["nonfinite_skipped"]),
        # Checkpoints written before the count existed restart it at 0.
        tokens_trained=int(state.get("tokens_trained", 0)),
    )


def parameter_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter name -> full shape. Under ZeRO-3 a parameter outside forward is a (0,) placeholder
    whose full shape DeepSpeed keeps as `ds_shape`."""
    return {name: list(getattr(p, "ds_shape", p.shape)) for name, p in module.named_parameters()}


def read_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint_dir) / STATE_FILE).read_text())
