"""A real 6-trial sweep, 2 trials at a time: local Ray, Tune's ASHA + the eval/train ratio stopper, each
trial a TorchTrainer with one DeepSpeed worker on tiny models. One trial is built to overfit (train and
eval text differ and its learning rate is ~70x the others'), and the ratio stopper must stop it. Three
share their phase-1 prefix, trained once. Two learn slowly from step 0, for ASHA to cut. Every trial
must end (none left ERROR or PENDING on a placement group a stopped trial kept). The best config then
re-runs through `raydistill train`. No mocks."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from ray import tune

from orchestrator.config import load_config
from orchestrator.errors import UserError
from orchestrator.sweep.results import BEST_CONFIG, RESULTS_CSV, read_results_csv
from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.settings import SweepSettings
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

MAX_STEPS = 40
OVERFIT_LR = 1e-2
SHARED_LR = 1.5e-4
SLOW_LR = 2e-5  # no phase 1 to share, and worse than SHARED_LR at ASHA's rungs
NUM_TRIALS = 6
CONCURRENT = 2  # 4 logical CPUs: (4 - 1 for Ray Data) // (1 worker + 0.01 for the trial driver)


@pytest.fixture(scope="module")
def ray_local():
    """Ray for this module: a fresh local instance with the dashboard on (bound to 127.0.0.1), which
    Ray Train's placement-group cleaner needs. 4 logical CPUs: two 1-worker trials at a time plus Ray Data."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    yield
    ray.shutdown()


def gap_corpus(root: Path) -> Path:
    """Train text one trial can overfit in a few steps. Train: two long documents of one sentence in
    rotation, which a bigram model predicts almost perfectly. Eval: one short document of the same
    sentence with lines of random words mixed in, small enough to be the only document the token-share
    split holds out. A trial that learns fast drives its train loss far below its eval loss (the
    random lines stay unpredictable) while its eval ppl still beats the slow trials', so the scheduler
    keeps it and only the ratio stopper can catch it."""
    corpus = root / "corpus"
    corpus.mkdir()
    cycle = "the quick brown fox jumps over the lazy dog".split()

    def sentence(k: int) -> str:
        return " ".join(cycle[k % 9 :] + cycle[: k % 9])

    for i in range(2):
        lines = [sentence(k) for k in range(i * 7, i * 7 + 700)]
        (corpus / f"pattern{i}.txt").write_text("\n".join(lines) + "\n")
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)) for _ in range(100)]
    lines = []
    for k in range(70):
        lines.append(" ".join(rng.choice(words) for _ in range(6)) if k % 2 else sentence(k))
    (corpus / "mixed.txt").write_text("\n".join(lines) + "\n")
    return corpus


def base_config(tmp_path: Path):
    corpus = gap_corpus(tmp_path)
    return load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.source={corpus}",
            "data.max_files=null",
            "data.eval_fraction=0.2",
            f"data.cache_dir={tmp_path / 'cache'}",
            "scaling.num_workers=1",  # two trials at a time on 4 logical CPUs (one CPU stays for Ray Data)
            f"train.max_steps={MAX_STEPS}",
            "train.warmup_steps=1",  # DeepSpeed's WarmupDecayLR refuses 0
            "train.weight_decay=0",
            "train.log_every=5",
            "train.eval_every=5",
            "train.checkpoint_every=20",
            # CE carries the train/eval gap; the random tiny teacher's parts are alike on both sets
            "loss.alpha_ce=1.0",
            "loss.alpha_kd=0.3",
        ],
    )


def max_overlap(run_dir: Path, records) -> int:
    """The most trials whose Tune results (first to last, by Tune's wall-clock `timestamp`) span one
    moment: a lower bound on how many ran at once."""
    import json

    spans = []
    for record in records:
        lines = (run_dir / "tune" / record.trial_id / "result.json").read_text().splitlines()
        stamps = [json.loads(line)["timestamp"] for line in lines if line.strip()]
        spans.append((min(stamps), max(stamps)))
    # Spans as [first, last): timestamps are whole seconds, so a trial that ends in the second another
    # starts does not count as running beside it.
    return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)


def test_sweep_stops_the_overfitting_trial_and_best_config_trains(ray_local, tmp_path):
    """One sweep, six trials, two at a time, under ASHA + the ratio stopper: three at one learning rate
    that differ only in their phase boundaries (so they share a phase-1 prefix, trained once), one
    that overfits, two slow ones from step 0 (last in line, so the first four meet ASHA's rungs as
    they would alone). Every trial finishes: TERMINATED, with a stated stop reason. The best config,
    trained from step 0 by `raydistill train`, reproduces its trial."""
    import json

    import ray
    import torch
    from safetensors.torch import load_file

    from orchestrator.sweep.layout import TRIALS_DIR
    from orchestrator.sweep.results import collect_trials
    from orchestrator.sweep.run import max_concurrent_trials
    from orchestrator.sweep.shared_prefix import PREFIX_DIR, read_table
    from orchestrator.train.run import run_training
    from orchestrator.train.telemetry import METRICS_FILE
    from orchestrator.train.trainer import STUDENT_DIR

    base = base_config(tmp_path)
    forks = {0.75: 30, 0.5: 20, 0.25: 10}  # phase1_end -> its last phase-1 step of MAX_STEPS
    points = [
        {"train.lr": SHARED_LR, "curriculum.phase1_end": p1, "curriculum.phase2_end": round(p1 + 0.2, 2)}
        for p1 in forks
    ]
    points.append({"train.lr": OVERFIT_LR, "curriculum.phase1_end": 0.0, "curriculum.phase2_end": 0.3})
    points += [
        {"train.lr": SLOW_LR, "curriculum.phase1_end": 0.0, "curriculum.phase2_end": p2} for p2 in (0.0, 0.3)
    ]
    space = {"train.lr": tune.choice([SHARED_LR, OVERFIT_LR, SLOW_LR]), **get_space("curriculum")}
    settings = SweepSettings(
        space="custom", num_samples=NUM_TRIALS, max_eval_train_ratio=2.0, ratio_grace_evals=1
    )
    run_dir = tmp_path / "sweep"
    assert max_concurrent_trials(ray.cluster_resources(), base) == CONCURRENT
    summary = run_sweep(base, settings, run_dir, space=space, points=points)

    # No trial lost: every one ended (TERMINATED, not ERROR, nor PENDING on a placement group that a
    # stopped trial never released), and each says why it ended.
    records = collect_trials(run_dir)
    assert sorted(r.status for r in records) == ["TERMINATED"] * NUM_TRIALS, [
        (r.trial_id, r.status) for r in records
    ]
    rows = read_results_csv(run_dir / RESULTS_CSV)
    assert len(rows) == NUM_TRIALS
    finished = [r for r in rows if r["stop_reason"] in ("completed", "scheduler", "eval_train_ratio")]
    assert len(finished) == NUM_TRIALS, [(r["trial_id"], r["stop_reason"]) for r in rows]
    # Two at a time, never more: some two trials' results interleave in time, no three do.
    assert max_overlap(run_dir, records) == CONCURRENT
    for row in rows:
        assert {"trial_id", "train.lr", "curriculum.phase1_end", "curriculum.phase2_end"} <= set(row)
        assert float(row["curriculum.phase1_end"]) <= float(row["curriculum.phase2_end"])
        assert row["stop_reason"] in ("completed", "scheduler", "eval_train_ratio"), row
        assert math.isfinite(float(row["best_eval_ppl"]))
        assert float(row["best_eval_ppl"]) <= float(row["final_eval_ppl"])

    (overfit,) = [r for r in rows if float(r["train.lr"]) == OVERFIT_LR]
    assert overfit["stop_reason"] == "eval_train_ratio", overfit
    assert float(overfit["eval_train_ratio"]) > 2.0
    assert int(overfit["steps"]) < MAX_STEPS  # stopped early, and its workers left promptly
    for row in rows:
        if row["stop_reason"] != "completed":
            # The workers waited at the eval Tune stopped the trial on: not one step past it.
            results = [
                json.loads(line) for line in (run_dir / "tune" / row["trial_id"] / "result.json").open()
            ]
            assert int(row["steps"]) == results[-1]["step"], (row, results[-1]["step"])
    assert int(overfit["start_step"]) == 0  # no phase 1 to share
    assert any(r["stop_reason"] == "completed" for r in rows)

    # One prefix run trained phase 1 up to the latest fork, with a checkpoint at each; each trial
    # of the group started from its own fork and trained only its own steps.
    (prefix,) = read_table(run_dir).values()
    assert prefix.fork_steps == sorted(forks.values()) and sorted(prefix.checkpoints) == prefix.fork_steps
    prefix_metrics = run_dir / PREFIX_DIR / prefix.key / METRICS_FILE
    prefix_records = [r for r in map(json.loads, prefix_metrics.open()) if "eval/ppl" in r]
    assert max(r["step"] for r in prefix_records) == max(forks.values())
    for row in rows:
        if float(row["train.lr"]) != SHARED_LR:
            continue
        fork = forks[float(row["curriculum.phase1_end"])]
        assert int(row["start_step"]) == fork
        metrics = run_dir / TRIALS_DIR / row["trial_id"] / METRICS_FILE
        first = min(json.loads(line)["step"] for line in metrics.open())
        assert fork < first <= fork + 5  # logged every 5 steps
        # Tune saw the prefix's evals up to the fork as the trial's own results, then the trial's.
        results = [json.loads(line) for line in (run_dir / "tune" / row["trial_id"] / "result.json").open()]
        replayed = [(r["step"], r["eval/ppl"]) for r in results if r["step"] <= fork]
        assert replayed == [(r["step"], r["eval/ppl"]) for r in prefix_records if r["step"] <= fork]
        assert all(r["start_step"] == fork for r in results)

    # Stopped trials shut their Train runs down cleanly: no placement group outlives its trial.
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert live == []
    assert (run_dir / "tune").is_dir()
    assert len(list((run_dir / "trials").glob("*/metrics.jsonl"))) == NUM_TRIALS
    slow = [r for r in rows if float(r["train.lr"]) == SLOW_LR]
    assert len(slow) == 2 and all(int(r["start_step"]) == 0 for r in slow)

    # best_config.yaml is a complete config `raydistill train` accepts as is. The best trial started
    # from the shared prefix; trained from step 0 it ends with the same student and eval ppl.
    best = load_config(run_dir / BEST_CONFIG)
    assert summary.best is not None and summary.best["stop_reason"] == "completed"
    assert best.train.lr == float(summary.best["train.lr"]) == SHARED_LR
    assert best.curriculum.phase2_end == float(summary.best["curriculum.phase2_end"])
    assert summary.best["start_step"] > 0
    student = run_training(best, tmp_path / "best-run", echo=False)
    last = [json.loads(line) for line in (tmp_path / "best-run" / METRICS_FILE).open()][-1]
    assert math.isclose(last["eval/ppl"], summary.best["final_eval_ppl"], rel_tol=1e-5)
    forked = load_file(run_dir / TRIALS_DIR / summary.best["trial_id"] / STUDENT_DIR / "model.safetensors")
    fresh = load_file(student / "model.safetensors")
    assert forked.keys() == fresh.keys()
    for key in fresh:
        torch.testing.assert_close(forked[key], fresh[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Without a cluster: CLI errors, stop reasons, the CSV and best_config.yaml, trial resources.


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--space", "nope"], "unknown search space; known: curriculum"),
        (["--num-samples", "0"], "--num-samples 0: must be an integer >= 1"),
        (["--scheduler", "random"], "--scheduler 'random': must be one of asha"),
        (["--max-eval-train-ratio", "0"], "--max-eval-train-ratio 0.0: must be a number > 0"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    from orchestrator.cli import main

    code = main(["sweep", "--config", str(ROOT / "configs" / "tiny.yaml"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("raydistill: error: ") and message in err and "\n" not in err


def test_a_missing_student_path_is_refused_before_the_sweep_dir_is_written(tmp_path, capsys):
    """The same preflight as `raydistill train`, before the sweep dir exists."""
    from orchestrator.cli import main

    run_dir = tmp_path / "sweep"
    argv = ["sweep", "--config", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run_dir)]
    code = main([*argv, "--set", f"student={tmp_path / 'no' / 'student'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(
        f"raydistill: error: student='{tmp_path / 'no' / 'student'}': no such model directory"
    )
    assert not run_dir.exists()


def test_cli_resume_needs_a_sweep_dir(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "no sweep there" in capsys.readouterr().err


def test_a_sweep_interrupted_before_tune_started_can_resume_and_is_not_overwritten(tmp_path):
    """Ctrl-C while the shared phase-1 prefix trains: Tune has no experiment yet, but the drawn points
    are saved, so --resume can start it; a new sweep into that dir is refused."""
    from orchestrator.sweep.sweep_dir import init_sweep_dir, load_sweep_dir, read_points, write_points

    base = load_config(ROOT / "configs" / "tiny.yaml")
    init_sweep_dir(tmp_path, base, SweepSettings(num_samples=2))
    points = [{"curriculum.phase1_end": 0.3, "curriculum.phase2_end": 0.6}]
    write_points(tmp_path, points)
    run_dir, loaded, settings = load_sweep_dir(tmp_path)
    assert run_dir == tmp_path.resolve() and loaded == base and settings.num_samples == 2
    assert read_points(tmp_path) == points
    with pytest.raises(UserError, match="already holds a sweep"):
        init_sweep_dir(tmp_path, base, SweepSettings())
    assert read_points(tmp_path) == points


def test_ctrl_c_before_tune_prints_the_resume_command_once_points_are_saved(tmp_path):
    from orchestrator.commands.sweep import resume_hint
    from orchestrator.sweep.sweep_dir import write_points

    assert resume_hint(tmp_path) is None  # nothing drawn yet: nothing to resume
    write_points(tmp_path, [{"curriculum.phase1_end": 0.3, "curriculum.phase2_end": 0.6}])
    assert (
        resume_hint(tmp_path)
        == f"raydistill: interrupted; continue with: raydistill sweep --resume {tmp_path}"
    )


def record(status="TERMINATED", steps=(5, 10), ratios=(1.0, 1.0), ppls=(50.0, 40.0)):
    from orchestrator.sweep.results import TrialRecord

    results = [
        {"step": s, "eval_train_ratio": r, "eval/ppl": p, "config/curriculum.phase1_end": 0.1}
        for s, r, p in zip(steps, ratios, ppls)
    ]
    return TrialRecord("t", status, {"curriculum.phase1_end": 0.2}, results, steps=max(steps, default=0))


def test_stop_reasons():
    from orchestrator.sweep.results import stop_reason

    assert stop_reason(record(steps=(5, 10)), 10, 2.0, 1) == "completed"
    assert stop_reason(record(ratios=(1.0, 2.5)), 20, 2.0, 1) == "eval_train_ratio"
    assert stop_reason(record(ratios=(2.5, 1.0)), 20, 2.0, 1) == "scheduler"
    assert stop_reason(record(status="ERROR"), 20, 2.0, 1) == "error"
    assert stop_reason(record(status="RUNNING"), 20, 2.0, 1) == "interrupted"
    assert stop_reason(record(steps=(), ratios=(), ppls=()), 20, 2.0, 1) == "not_started"


def test_rows_csv_and_best_config(tmp_path):
    from orchestrator.config import config_from_dict
    from orchestrator.sweep.results import (
        best_config,
        pick_best,
        trial_row,
        write_best_config,
        write_results_csv,
    )

    row = trial_row(record(), max_steps=10, max_ratio=2.0, grace_evals=1)
    # the value the trial last trained with wins over the sampled one (PBT restarts)
    assert row["curriculum.phase1_end"] == 0.1
    assert (row["final_eval_ppl"], row["best_eval_ppl"], row["steps"]) == (40.0, 40.0, 10)
    stopped = dict(row, trial_id="u", stop_reason="scheduler", final_eval_ppl=30.0, best_eval_ppl=30.0)
    assert pick_best([stopped, row]) is row  # a trial that ran to the end beats one cut short

    write_results_csv(tmp_path / "r.csv", [row, stopped], ["curriculum.phase1_end"])
    rows = read_results_csv(tmp_path / "r.csv")
    assert list(rows[0]) == [
        "trial_id",
        "curriculum.phase1_end",
        "final_eval_ppl",
        "best_eval_ppl",
        "eval_train_ratio",
        "steps",
        "start_step",
        "stop_reason",
    ]
    assert rows[0]["start_step"] == "0"  # started from step 0: no shared prefix
    base = config_from_dict({}).to_dict()
    config = best_config(base, row, ["curriculum.phase1_end"])
    write_best_config(tmp_path / BEST_CONFIG, config, row, ["curriculum.phase1_end"], "here")
    assert load_config(tmp_path / BEST_CONFIG) == config
    assert config.curriculum.phase1_end == 0.1


def test_concurrent_trials_fit_the_cluster():
    from orchestrator.config import config_from_dict
    from orchestrator.errors import UserError
    from orchestrator.sweep.run import max_concurrent_trials

    one = config_from_dict({"scaling": {"num_workers": 1}})
    two = config_from_dict({"scaling": {"num_workers": 2}})
    assert max_concurrent_trials({"CPU": 3.0}, one) == 1  # 1.01 per trial, 1 CPU for Ray Data
    assert max_concurrent_trials({"CPU": 4.0}, one) == 2
    assert max_concurrent_trials({"CPU": 16.0}, two) == 7
    assert max_concurrent_trials({"CPU": 16.0}, two, limit=3) == 3
    with pytest.raises(UserError, match="one trial needs 3.01 CPUs"):
        max_concurrent_trials({"CPU": 2.0}, two)
    gpu = config_from_dict({"scaling": {"num_workers": 2, "use_gpu": True}})
    assert max_concurrent_trials({"CPU": 64.0, "GPU": 4.0}, gpu) == 2


def test_one_trial_at_a_time_under_asha_tells_the_user_what_it_costs():
    from orchestrator.sweep.run import concurrency_note

    one_at_a_time = concurrency_note(1, SweepSettings(scheduler="asha"))
    assert one_at_a_time.startswith("raydistill: 1 trial at a time")
    assert "--num-samples 16" in one_at_a_time
    # Several at once, or a scheduler that is not ASHA: just the count.
    assert (
        concurrency_note(3, SweepSettings(scheduler="asha"))
        == "raydistill: 3 trials at a time on this cluster"
    )
    assert "--num-samples" not in concurrency_note(1, SweepSettings(scheduler="hyperband"))
