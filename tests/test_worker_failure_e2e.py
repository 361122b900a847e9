"""A user error found only in a Ray Train worker, through the real CLI: a student directory whose
config.json passes the driver's checks but whose weights are cut short. One line on stderr naming the
student, exit 2, the tracebacks in the run's log, and no retry although scaling.max_failures allows two.
A subprocess of its own (its own Ray): ~30 s, mostly Ray and worker start-up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tiny_llama import tiny_llama

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
RAYDISTILL = Path(sys.executable).parent / "raydistill"
# What ray.init prints on every local start in Ray 2.60 (auth stays on: RAY_DEEPSPEED_NOTES.md).
RAY_START_NOTICE = "Token authentication is enabled for this Ray cluster"
# Printed once per attempt by rank 0 while it sets up (workers/worker_setup.py).
ATTEMPT_LINE = "raydistill: deepspeed.teacher_precision auto -> bf16"


def test_a_student_that_does_not_load_in_the_worker_is_one_line_exit_2_with_a_log(tiny_data_dir, tmp_path):
    student = tmp_path / "student"
    tiny_llama(2, 32, 512, seed=0).save_pretrained(student)  # the data's vocabulary and special ids
    weights = student / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    run_dir = tmp_path / "run"
    overrides = [f"student={student}", f"data.source={tiny_data_dir}", "train.max_steps=4"]
    argv = [str(RAYDISTILL), "train", "--config", str(TINY), "--run-dir", str(run_dir)]
    for override in [*overrides, "scaling.max_failures=2"]:
        argv += ["--set", override]
    start = time.monotonic()
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    console = result.stdout + result.stderr
    assert result.returncode == 2, console

    log = run_dir / "logs" / "worker_error.log"
    errors = [line for line in result.stderr.splitlines() if RAY_START_NOTICE not in line]
    assert errors == [
        f"raydistill: error: student '{student}' cannot be loaded: Error while deserializing header: "
        f"incomplete metadata, file not fully covered (full log: {log})"
    ], console
    assert "Traceback" not in console and "(TrainController" not in console, console
    assert console.count(ATTEMPT_LINE) == 1, console  # not retried
    text = log.read_text()
    assert "=== rank 0 ===" in text and "Traceback (most recent call last)" in text
    assert "safetensors" in text and "SafetensorError" in text and "load_model" in text
    print(f"failed in {elapsed:.1f} s")  # shown with -s: the timing quoted in RELIABILITY.md
