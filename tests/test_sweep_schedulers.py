"""The schedulers that restart trials from Tune checkpoints, and `raydistill sweep --resume`, for real:
local Ray, each trial a TorchTrainer with one DeepSpeed worker on tiny models. No mocks.

- PBT: the worse of two trials is restarted from the better one's checkpoint (Tune's policy log and
  a new Train run); where the restarted run reports before the sweep ends, it starts at the
  checkpoint's step, not at 0, and no phase boundary moves into the past.
- HyperBand pauses and resumes through the same checkpoint path as PBT; it has no test of its own:
  Ray's HyperBand fills its full-length bracket first, so a sweep small enough for the suite never
  pauses a trial (4 trials of 4 evals all ran to the end).
- --resume: a sweep interrupted with Ctrl-C (SIGINT) exits 130 and finishes on `--resume`.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.sweep.results import RESULTS_CSV, read_results_csv
from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.settings import SweepSettings
from orchestrator.train.telemetry import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

# Short trials: every restart is a new Train run (worker start-up, DeepSpeed init), which costs more
# than the steps. PBT perturbs at evals.
MAX_STEPS = 20
# PBT gets one more eval: whichever trial reports first at step 10 (when PBT has nobody to compare
# it with), the worse one is exploited at step 10 or 20, never on its final result (FinalResultPBT).
PBT_MAX_STEPS = 30


def tiny_sweep_overrides(cache_dir: Path, eval_every: int = 5, max_steps: int = MAX_STEPS) -> list[str]:
    return [
        f"data.cache_dir={cache_dir}",
        "scaling.num_workers=1",  # two trials at a time on 4 logical CPUs (one CPU stays for Ray Data)
        f"train.max_steps={max_steps}",
        "train.warmup_steps=2",
        "train.log_every=5",
        f"train.eval_every={eval_every}",
        f"train.checkpoint_every={max_steps}",
    ]


def restarted_results(run_dir: Path) -> dict[str, list[dict]]:
    """Tune results of each trial that Tune restarted from a checkpoint, from its first restarted Train
    run on (the trial driver names its Train runs `run`, then `run_1`, `run_2`, ...)."""
    from orchestrator.sweep.results import collect_trials

    out = {}
    for record in collect_trials(run_dir):
        later = [r for r in record.results if r.get("train_run", "run") != "run"]
        if later:
            out[record.trial_id] = later
    return out


def no_live_placement_groups() -> bool:
    import ray

    return all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def run_tiny_sweep(
    tmp_path: Path, scheduler: str, points: list[dict], eval_every: int, max_steps: int = MAX_STEPS
):
    from search_spaces import get_space

    overrides = tiny_sweep_overrides(tmp_path / "cache", eval_every, max_steps)
    base = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    settings = SweepSettings(
        space="curriculum", num_samples=len(points), scheduler=scheduler, max_eval_train_ratio=100.0
    )
    run_dir = tmp_path / scheduler
    summary = run_sweep(base, settings, run_dir, space=get_space("curriculum"), points=points)
    return run_dir, summary


def test_pbt_never_perturbs_on_a_trials_final_result(monkeypatch):
    """An exploit on the last result would restart the trial with nothing left to train."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    from orchestrator.sweep.pbt import FinalResultPBT
    from orchestrator.sweep.schedulers import build_scheduler
    from search_spaces import get_space

    base = load_config(ROOT / "configs" / "tiny.yaml", tiny_sweep_overrides(Path("unused"), 10))
    scheduler = build_scheduler("pbt", base, get_space("curriculum"))
    assert isinstance(scheduler, FinalResultPBT)
    seen = []
    monkeypatch.setattr(
        PopulationBasedTraining, "on_trial_result", lambda self, c, t, r: seen.append(r["step"]) or "PAUSE"
    )
    assert (
        scheduler.on_trial_result(None, None, {"step": MAX_STEPS, "eval/ppl": 9.0}) == TrialScheduler.CONTINUE
    )
    assert scheduler.on_trial_result(None, None, {"step": 10, "eval/ppl": 9.0}) == "PAUSE"  # PBT's own call
    assert seen == [10]
    pickle.loads(pickle.dumps(scheduler))  # Tune saves it in the experiment state for --resume


def test_pbt_restarts_the_worse_trial_from_the_better_ones_checkpoint(ray_cluster, tmp_path):
    # Two trials at once (PBT's population). With an eval every 10 of 30 steps PBT perturbs at step 10
    # or 20: the worse trial restarts from the better one's checkpoint with mutated boundaries.
    points = [
        {"curriculum.phase1_end": 0.0, "curriculum.phase2_end": 0.1},
        {"curriculum.phase1_end": 0.45, "curriculum.phase2_end": 0.9},
    ]
    eval_every = 10
    run_dir, summary = run_tiny_sweep(tmp_path, "pbt", points, eval_every, PBT_MAX_STEPS)

    # Tune's own record of the exploits: one line per restart, naming the donor trial.
    policies = {
        p.name[len("pbt_policy_") : -len(".txt")]: p for p in (run_dir / "tune").glob("pbt_policy_*.txt")
    }
    exploited = {tid for tid, path in policies.items() if path.read_text().strip()}
    assert exploited, "PBT exploited no trial"
    for trial_id in exploited:
        # The trial driver started a new Train run from the donor's checkpoint.
        assert (run_dir / "trials" / trial_id / "run_1").is_dir(), trial_id
    # Results of restarted runs that reached Tune before the sweep ended (a restart at the last
    # perturbation may end with the trial before its next eval).
    for trial_id, results in restarted_results(run_dir).items():
        first = results[0]
        # The new Train run starts at the donor's checkpoint step, not at step 0 (whose first eval
        # would be step `eval_every`).
        checkpoint_step = first["step"] - eval_every
        assert checkpoint_step > 0, (trial_id, first["step"])
        # Progress of the last step the checkpoint trained: a boundary at or before it is crossed.
        last_trained = (checkpoint_step - 1) / PBT_MAX_STEPS
        p1, p2 = first["config/curriculum.phase1_end"], first["config/curriculum.phase2_end"]
        assert p1 <= p2
        # A boundary the checkpoint had already crossed keeps the value it was trained with; PBT may
        # move the others, but never into the past (boundaries are stored to 6 decimals, so one moved
        # to the restart step's progress 10/30 reads 0.333333, which still switches at that step).
        for key, value in (("curriculum.phase1_end", p1), ("curriculum.phase2_end", p2)):
            trained_values = {point[key] for point in points}
            assert value > last_trained or value in trained_values, (key, value, first["step"])
    rows = read_results_csv(run_dir / RESULTS_CSV)
    assert len(rows) == 2
    assert all(r["stop_reason"] in ("completed", "scheduler") for r in rows), rows
    assert summary.best is not None
    assert no_live_placement_groups()


def test_sweep_interrupted_with_ctrl_c_finishes_on_resume(tmp_path):
    """The CLI in a subprocess (its own Ray), SIGINT once the first trial has reported, then --resume."""
    run_dir = tmp_path / "sweep"
    argv = [sys.executable, "-m", "orchestrator", "sweep", "--config", str(ROOT / "configs" / "tiny.yaml")]
    for item in tiny_sweep_overrides(tmp_path / "cache"):
        argv += ["--set", item]
    argv += ["--num-samples", "2", "--max-concurrent", "1", "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        metrics = (
            list((run_dir / "trials").glob(f"*/{METRICS_FILE}")) if (run_dir / "trials").exists() else []
        )
        if any("eval/ppl" in m.read_text() for m in metrics):
            break
        time.sleep(1)
    assert first.poll() is None, first.stdout.read()
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 130, out[-3000:]
    assert f"raydistill sweep --resume {run_dir}" in out
    unfinished = [
        r
        for r in read_results_csv(run_dir / RESULTS_CSV)
        if r["stop_reason"] in ("interrupted", "not_started")
    ]
    assert unfinished

    resumed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", "--resume", str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    rows = read_results_csv(run_dir / RESULTS_CSV)
    assert len(rows) == 2
    assert all(r["stop_reason"] in ("completed", "scheduler") for r in rows), rows
    assert (run_dir / "best_config.yaml").exists()
