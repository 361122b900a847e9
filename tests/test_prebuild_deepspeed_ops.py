"""scripts/prebuild_deepspeed_ops.py (run by `make setup`): DeepSpeed's CPU comm op is built and
loadable before the first training run, so no run pauses to compile it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "prebuild_deepspeed_ops.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shared-memory comm op is DeepSpeed's CPU path")
def test_setup_leaves_the_comm_op_built_where_runs_load_it():
    # Same environment as a run: the default extensions dir (or the user's TORCH_EXTENSIONS_DIR).
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert "deepspeed: deepspeed.ops.comm.deepspeed_shm_comm_op ready" in done.stdout, (
        done.stdout + done.stderr
    )

    from torch.utils.cpp_extension import _get_build_directory

    built = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
    assert list(built.glob("deepspeed_shm_comm*.so")), sorted(p.name for p in built.iterdir())
