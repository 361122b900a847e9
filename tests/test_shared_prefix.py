"""Which trials of a sweep share a phase-1 prefix, where each forks, and the table that records it.
(The real sweep that trains a prefix and forks trials from it is in tests/test_sweep.py.)"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import load_config
from orchestrator.sweep.shared_prefix import (
    PrefixRun,
    fork_point,
    phase1_steps,
    plan_prefixes,
    prefix_key,
    read_table,
    steps_saved,
    write_table,
)
from workers.curriculum import CurriculumSchedule
from workers.loss_config import CurriculumConfig, LossConfig

ROOT = Path(__file__).resolve().parents[1]


def config(p1: float, p2: float, *overrides: str, max_steps: int = 160):
    return load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"curriculum.phase1_end={p1}",
            f"curriculum.phase2_end={p2}",
            f"train.max_steps={max_steps}",
            "train.warmup_steps=1",
            *overrides,
        ],
    )


def test_phase1_steps_are_the_steps_the_worker_trains_in_phase_1():
    for p1, p2, max_steps in [(0.3, 0.6, 160), (0.1125, 0.15, 160), (0.375, 0.5, 7), (0.5, 0.5, 5)]:
        c = config(p1, p2, max_steps=max_steps)
        schedule = CurriculumSchedule(
            CurriculumConfig(phase1_end=p1, phase2_end=p2),
            LossConfig(alpha_ce=1, alpha_kd=1, alpha_feature=1, alpha_attention=1),
        )
        n = phase1_steps(c)
        # Step k (0-based) trains at progress k / max_steps (workers.loop).
        assert all(schedule.phase(k / max_steps) == 1 for k in range(n))
        assert schedule.phase(n / max_steps) != 1
    assert phase1_steps(config(0.3, 0.6)) == 48
    assert phase1_steps(config(0.0, 0.4)) == 0
    assert phase1_steps(config(0.3, 0.6, "curriculum.enabled=false")) == 0


def test_prefix_key_ignores_boundaries_and_bookkeeping_only():
    key = prefix_key(config(0.3, 0.6))
    assert prefix_key(config(0.1, 0.8, "train.log_every=1", "train.checkpoint_every=7")) == key
    assert prefix_key(config(0.3, 0.6, "train.lr=2e-3")) != key
    assert prefix_key(config(0.3, 0.6, "loss.kd_temperature=4.0")) != key
    assert prefix_key(config(0.3, 0.6, "train.max_steps=200")) != key  # another lr schedule


def test_plan_shares_phase_1_within_groups_of_two_or_more():
    trials = [
        config(0.3, 0.6),  # 48
        config(0.15, 0.3),  # 24
        config(0.15, 0.6),  # 24: same fork as the one before
        config(0.0, 0.3),  # no phase 1: starts from step 0
        config(0.0, 0.0),
        config(0.2, 0.4, "train.lr=2e-3"),  # alone in its group: nothing to share
    ]
    (run,) = plan_prefixes(trials)
    assert run.fork_steps == [24, 48] and run.steps == 48 and run.trials == 3
    assert run.key == prefix_key(trials[0])
    # Phase 1 throughout, on the full run's schedule, a checkpoint kept at every fork.
    assert run.config["curriculum"]["phase1_end"] == run.config["curriculum"]["phase2_end"] == 1.0
    assert run.config["train"]["max_steps"] == 160
    assert run.config["train"]["checkpoints_to_keep"] == 2
    assert steps_saved(trials) == 48 + 24 + 24 - 48
    assert plan_prefixes([config(0.3, 0.6), config(0.0, 0.5)]) == []


def test_trials_fork_only_from_a_trained_prefix_at_their_own_phase1_end(tmp_path):
    trials = [config(0.3, 0.6), config(0.15, 0.3)]
    (run,) = plan_prefixes(trials)
    table = {run.key: run}
    assert fork_point(trials[0], table) is None  # planned, not trained yet
    trained = PrefixRun(run.key, run.config, run.fork_steps, run.trials, {24: "/ck/24", 48: "/ck/48"})
    write_table(tmp_path, {run.key: trained})
    table = read_table(tmp_path)
    assert table[run.key] == trained
    assert fork_point(trials[0], table) == ("/ck/48", 48)
    assert fork_point(trials[1], table) == ("/ck/24", 24)
    assert fork_point(config(0.0, 0.3), table) is None
    assert fork_point(config(0.3, 0.6, "train.lr=2e-3"), table) is None
    assert read_table(tmp_path / "nowhere") == {}
