"""Ctrl-C / SIGTERM during `raydistill train`: the step ends with a checkpoint, the driver exits with
128 + the signal's number, and the same command resumes. Real signals to a real process, whose
console is also checked for lines of Ray's internals (tests/ray_noise.py): the suite's one
`raydistill train` subprocess on a local Ray of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_noise import ray_internals_lines, repeated_worker_lines

from orchestrator.errors import Interrupted
from orchestrator.train.interrupt import REQUEST_FILE, GracefulInterrupt

ROOT = Path(__file__).resolve().parents[1]
RAYDISTILL = Path(sys.executable).parent / "raydistill"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def signal_self_then_wait_for_the_request(signum: int, request_file: Path):
    """What a training run looks like to the handler: a fit() that goes on until the workers see the request."""

    def fit():
        os.kill(os.getpid(), signum)
        wait_for(request_file.exists, 10, "the request file")
        return "fit result"

    return fit


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_asks_the_workers_to_checkpoint_and_lets_fit_finish(tmp_path, capsys, signum, code):
    with GracefulInterrupt(tmp_path) as interrupt:
        result = interrupt.call(signal_self_then_wait_for_the_request(signum, tmp_path / REQUEST_FILE))
    assert result == "fit result"
    assert interrupt.requested and interrupt.exit_code == code
    assert signal.Signals(signum).name in capsys.readouterr().err
    assert not (tmp_path / REQUEST_FILE).exists()  # removed, so a rerun is not stopped by it


def test_second_signal_stops_at_once(tmp_path):
    def fit():
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for((tmp_path / REQUEST_FILE).exists, 10, "the request file")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # never reached: the main thread leaves on the second signal

    with (
        pytest.raises(Interrupted, match="second SIGTERM") as caught,
        GracefulInterrupt(tmp_path) as interrupt,
    ):
        interrupt.call(fit)
    assert caught.value.exit_code == 143


def test_signal_before_training_started_stops_with_its_exit_code(tmp_path):
    with pytest.raises(Interrupted, match="before training started") as caught, GracefulInterrupt(tmp_path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert caught.value.exit_code == 143


def test_handlers_are_restored_and_a_stale_request_is_cleared(tmp_path):
    (tmp_path / REQUEST_FILE).write_text("SIGINT\n")  # left by a driver that was killed hard
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with GracefulInterrupt(tmp_path) as interrupt:
        assert not (tmp_path / REQUEST_FILE).exists()
        assert interrupt.call(lambda: 7) == 7
        assert not interrupt.requested
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.ray
def test_sigterm_to_raydistill_train_checkpoints_the_step_and_the_same_command_resumes(
    ray_cluster, tiny_data_dir, tmp_path
):
    from orchestrator.config import load_config
    from orchestrator.train.run import run_training
    from workers.checkpointing import read_state

    run_dir = tmp_path / "run"
    overrides = [
        f"data.source={tiny_data_dir}",
        "train.max_steps=30",  # more than it gets to run before the signal
        "train.log_every=1",
        "train.eval_every=25",
        "train.checkpoint_every=25",
    ]
    argv = [
        str(RAYDISTILL),
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--run-dir",
        str(run_dir),
    ]
    for override in overrides:
        argv += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # Training has started (past the first steps) and no checkpoint has been written yet.
        wait_for(lambda: len(metrics_steps(run_dir)) >= 3, 240, "the first logged steps")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    # The console holds raydistill's lines, none of Ray's internals (workers/ray_console.py).
    assert ray_internals_lines(out + err) == []
    assert repeated_worker_lines(out + err) == []
    assert "raydistill: starting run in" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("raydistill: stopped by SIGTERM at step "), last
    steps = metrics_steps(run_dir)
    stopped_at = steps[-1]
    assert f"at step {stopped_at}/30" in last and stopped_at < 25
    assert steps == list(range(1, stopped_at + 1))
    checkpoints = sorted(run_dir.glob("checkpoint_*/"))
    assert len(checkpoints) == 1 and read_state(checkpoints[0])["step"] == stopped_at
    assert not (run_dir / "student").exists()

    # The same command again (here in-process, on the test's Ray): resumes at the next step.
    config = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    student = run_training(config, run_dir, echo=False)
    assert (student / "model.safetensors").exists()
    assert metrics_steps(run_dir) == list(range(1, 31))
