"""End-to-end `raydistill train` runs: a real local Ray cluster, 2 Ray Train workers, real DeepSpeed
engines (gloo on CPU), real Hugging Face models saved and loaded. No mocks."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.config import load_config
from orchestrator.train.ray_checkpoints import registered_checkpoints, unregistered_checkpoints
from orchestrator.train.run import TrainingFailed, run_training
from orchestrator.train.telemetry import read_metrics
from workers.checkpointing import STATE_FILE, read_state
from workers.curriculum import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

# 12 steps with boundaries 0.3 / 0.6: phase 1 = steps 1-4, phase 2 = 5-8, phase 3 = 9-12.
BASE = [
    "train.max_steps=12",
    "train.log_every=1",
    "train.eval_every=4",
    "train.checkpoint_every=6",
    "train.warmup_steps=2",
    "train.eval_batches=2",
]


def make_config(data_dir: Path, *overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [f"data.source={data_dir}", *BASE, *overrides])


def assert_ledger_consistent(records: list[dict]) -> None:
    for record in records:
        for prefix in ("loss", "eval"):
            if f"{prefix}/total" not in record:
                continue
            parts = sum(record[f"{prefix}/{c}/scaled"] for c in COMPONENTS)
            assert math.isclose(record[f"{prefix}/total"], parts, rel_tol=1e-5, abs_tol=1e-6), (
                prefix,
                record,
            )
            for c in COMPONENTS:
                scaled = record[f"{prefix}/{c}/raw"] * record[f"{prefix}/{c}/weight"]
                assert math.isclose(record[f"{prefix}/{c}/scaled"], scaled, rel_tol=1e-5, abs_tol=1e-7)
        if record["phase"] == 1:
            for prefix in ("loss", "eval"):
                for c in ("feature", "attention"):
                    assert record.get(f"{prefix}/{c}/weight", 0.0) == 0.0


def student_state(student_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(student_dir).state_dict()


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "zero2"
    student_dir = run_training(make_config(tiny_data_dir, "deepspeed.zero_stage=2"), run_dir, echo=False)
    return run_dir, student_dir


def test_zero2_run_reports_every_step_with_a_consistent_ledger(zero2_run):
    run_dir, _ = zero2_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {r["phase"] for r in records} == {1, 2, 3}
    assert_ledger_consistent(records)
    evals = [r for r in records if "eval/ppl" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    for r in evals:
        assert math.isclose(r["eval/ppl"], math.exp(r["eval/ce"]), rel_tol=1e-6)
        assert r["eval_train_ratio"] > 0
    # Phase 3 asks for attention maps: the attention part is really computed (eager attention).
    assert records[-1]["loss/attention/raw"] > 0
    # The loss falls: plain CE at the end is below the start.
    assert records[-1]["loss/ce/raw"] < records[0]["loss/ce/raw"]
    assert (run_dir / "config.yaml").exists()


def test_exported_student_loads_with_plain_transformers_and_generates(zero2_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, student_dir = zero2_run
    assert (student_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    assert model.config.num_hidden_layers == 2
    inputs = tokenizer("def main(", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8


def test_checkpoints_hold_deepspeed_format_and_rerun_resumes_to_the_same_student(zero2_run, tiny_data_dir):
    run_dir, student_dir = zero2_run
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # steps 6 and 12, checkpoints_to_keep=2
    latest = checkpoints[-1]
    assert (latest / "latest").exists() and (latest / "zero_to_fp32.py").exists()
    assert len(list(latest.glob("step_*/zero_pp_rank_*_optim_states.pt"))) == 2  # one partition per rank
    before = student_state(student_dir)
    # DeepSpeed's own consolidation script turns the ZeRO partitions into the exported weights.
    consolidated_dir = run_dir.parent / "consolidated"
    subprocess.run(
        [
            sys.executable,
            str(latest / "zero_to_fp32.py"),
            str(latest),
            str(consolidated_dir),
            "--safe_serialization",
        ],
        check=True,
        capture_output=True,
    )
    from safetensors.torch import load_file

    consolidated = {}
    for shard in consolidated_dir.glob("*.safetensors"):
        consolidated.update(load_file(shard))
    student_keys = {
        k.removeprefix("student."): v for k, v in consolidated.items() if k.startswith("student.")
    }
    assert student_keys.keys() & before.keys() and all(k in student_keys for k in before if "rotary" not in k)
    for key, value in student_keys.items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # Same run dir again: resumes from the step-12 checkpoint, trains nothing, re-exports.
    run_training(make_config(tiny_data_dir, "deepspeed.zero_stage=2"), run_dir, echo=False)
    after = student_state(student_dir)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)


def test_checkpoints_copied_in_from_a_wider_run_are_refused_before_ray(
    zero2_run, tiny_data_dir, tmp_path, monkeypatch, capsys
):
    """Run dir of a narrower student holding the zero2 run's real DeepSpeed checkpoints (and Ray's
    snapshot naming them): one line naming the checkpoint and the first parameter that differs, exit 2,
    before Ray is asked for workers; nothing in the run dir changes."""
    from orchestrator.cli import main
    from orchestrator.train import ray_session

    source, _ = zero2_run
    monkeypatch.setattr(ray_session, "ensure_ray", lambda *a, **k: pytest.fail("Ray reached"))
    narrower = make_config(tiny_data_dir, "deepspeed.zero_stage=2", "derive.hidden_size=32")
    config_file = tmp_path / "narrow.yaml"
    config_file.write_text(narrower.to_yaml())
    run_dir = tmp_path / "narrow"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(narrower.to_yaml())
    shutil.copy2(source / "checkpoint_manager_snapshot.json", run_dir)
    for checkpoint in source.glob("checkpoint_*/"):
        shutil.copytree(checkpoint, run_dir / checkpoint.name)
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.name != "config.yaml"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept}
    assert len(before) > 10  # DeepSpeed's files of both checkpoints, Ray's snapshot
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "--run-dir", str(run_dir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    newest = max(run_dir.glob("checkpoint_*/"))
    assert len(lines) == 1 and lines[0].startswith(f"raydistill: error: checkpoint {newest} does not fit"), (
        lines
    )
    assert (
        "parameter student.model.embed_tokens.weight has shape [512, 64] in the checkpoint, [512, 32]"
        in lines[0]
    )
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert (run_dir / "config.yaml").read_text() == narrower.to_yaml()


def test_worker_sigkilled_restarts_from_checkpoint_and_matches_uninterrupted_run(
    zero2_run, tiny_data_dir, tmp_path
):
    run_dir, _ = zero2_run
    uninterrupted = {r["step"]: r for r in read_metrics(run_dir)}
    crashed_dir = tmp_path / "crashed"
    config = make_config(tiny_data_dir, "deepspeed.zero_stage=2", "scaling.max_failures=1")
    faults = {"crash_at_step": 9, "crash_rank": 1, "crash_marker": str(tmp_path / "crashed.marker")}
    run_training(config, crashed_dir, echo=False, faults=faults)
    assert (tmp_path / "crashed.marker").exists(), "the fault was never injected"
    records = read_metrics(crashed_dir)
    # The raw line-by-line list, so a replayed step written twice would show: steps 7-8 run again
    # after the restart from the step-6 checkpoint, yet each appears exactly once.
    assert [r["step"] for r in records] == list(range(1, 13))
    resumed = {r["step"]: r for r in records}
    for step in range(1, 13):
        for key in ("loss/total", "loss/ce/raw", "loss/kd/raw", "loss/feature/raw", "lr"):
            assert math.isclose(resumed[step][key], uninterrupted[step][key], rel_tol=1e-5, abs_tol=1e-7), (
                step,
                key,
            )
    assert math.isclose(resumed[12]["eval/ppl"], uninterrupted[12]["eval/ppl"], rel_tol=1e-5)


def test_a_crash_while_a_checkpoint_is_copied_leaves_the_last_one_usable_and_the_rerun_resumes(
    zero2_run, tiny_data_dir, tmp_path, capsys
):
    """Rank 0 dies (SIGKILL) halfway through copying its part of the step-8 checkpoint into the run
    dir, its state file cut in half. With no restarts allowed the run fails; Ray never registered that
    dir, so the same command resumes from the step-4 checkpoint, and ends as the uninterrupted run did."""
    run_dir, _ = zero2_run
    uninterrupted = {r["step"]: r for r in read_metrics(run_dir)}
    crashed_dir = tmp_path / "crashed"
    config = make_config(tiny_data_dir, "deepspeed.zero_stage=2", "train.checkpoint_every=4")
    marker = tmp_path / "crashed.marker"
    faults = {"crash_in_checkpoint_at_step": 8, "crash_rank": 0, "crash_marker": str(marker)}
    with pytest.raises(TrainingFailed):
        run_training(config, crashed_dir, echo=False, faults=faults)
    assert marker.exists(), "the fault was never injected"
    [half] = unregistered_checkpoints(crashed_dir)
    with pytest.raises(json.JSONDecodeError):
        json.loads((half / STATE_FILE).read_text())  # the cut fell in the file the driver reads
    assert [read_state(d)["step"] for d in registered_checkpoints(crashed_dir)] == [4]

    capsys.readouterr()
    student_dir = run_training(config, crashed_dir, echo=True)
    assert f"raydistill: ignoring {half.name}: a checkpoint a crash cut short" in capsys.readouterr().out
    records = read_metrics(crashed_dir)
    assert [r["step"] for r in records] == list(range(1, 13))
    for step in range(1, 13):
        for key in ("loss/total", "loss/ce/raw", "loss/kd/raw", "loss/feature/raw", "lr"):
            assert math.isclose(
                records[step - 1][key], uninterrupted[step][key], rel_tol=1e-5, abs_tol=1e-7
            ), (
                step,
                key,
            )
    assert [read_state(d)["step"] for d in registered_checkpoints(crashed_dir)][-1] == 12
    assert student_state(student_dir)  # plain transformers loads the exported student


@pytest.mark.parametrize("stage", [0, 3])
def test_other_zero_stages_train_save_and_reload(stage, ray_cluster, tiny_data_dir, tmp_path):
    config = make_config(
        tiny_data_dir, f"deepspeed.zero_stage={stage}", "train.max_steps=8", "train.checkpoint_every=4"
    )
    run_dir = tmp_path / f"zero{stage}"
    student_dir = run_training(config, run_dir, echo=False)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert_ledger_consistent(records)
    before = student_state(student_dir)
    assert all(v.numel() > 0 for v in before.values())  # ZeRO-3 shards were gathered for the export
    run_training(config, run_dir, echo=False)  # reloads the final DeepSpeed checkpoint of this stage
    after = student_state(student_dir)
    for key in before:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)


def test_non_finite_steps_are_skipped_counted_and_named_then_too_many_stop_the_run(
    ray_cluster, tiny_data_dir, tmp_path
):
    run_dir = tmp_path / "nan"
    config = make_config(
        tiny_data_dir, "train.max_steps=8", "train.checkpoint_every=4", "train.max_nonfinite_in_a_row=2"
    )
    with pytest.raises(TrainingFailed, match="non-finite steps in a row"):
        # Step 2 is poisoned alone (skipped, run goes on); steps 5 and 6 in a row stop the run.
        run_training(config, run_dir, echo=False, faults={"nan_teacher_steps": [2, 5, 6]})
    records = {r["step"]: r for r in read_metrics(run_dir)}
    assert "loss/total" not in records[2] and records[2]["nonfinite_components"] == "kd"
    assert records[2]["nonfinite_skipped"] == 1
    assert all(math.isfinite(records[s]["loss/total"]) for s in (1, 3, 4))
    assert records[6]["nonfinite_skipped"] == 3
    # The checkpoint of step 4 is the last good one and is kept.
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 1
    assert not (run_dir / "student").exists()
