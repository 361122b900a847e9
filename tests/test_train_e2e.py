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


def scheduled_lrs(config, max_steps: int) -> list[float]:
    """The lr after each of `max_steps` optimizer steps: DeepSpeed's WarmupCosineLR with the run's lr
    and min_lr_ratio and BASE's 2 linear warm-up steps from 0, stepped on a plain torch optimizer."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    train = config.to_dict()["train"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=train["lr"])
    schedule = WarmupCosineLR(
        optimizer,
        total_num_steps=max_steps,
        warmup_min_ratio=0.0,
        warmup_num_steps=2,
        cos_min_ratio=train["min_lr_ratio"],
        warmup_type="linear",
    )
    lrs = []
    for _ in range(max_steps):
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def table_weights(progress: float) -> dict[str, float]:
    """configs/tiny.yaml's weights at `progress` by the DESIGN.md table (p1 0.3, p2 0.6, alphas 0.3/0.7/1/1)."""
    feature = 0.0 if progress < 0.3 else min((progress - 0.3) / 0.3, 1.0)
    return {"ce": 0.3, "kd": 0.7, "feature": feature, "attention": 1.0 if progress >= 0.6 else 0.0}


STATIC_KEYS = {"step", "max_steps", "progress", "phase", "lr", "tokens_per_s", "nonfinite_skipped"}
STATIC_KEYS |= {"tokens_trained", "trained_share"}
STATIC_KEYS |= {"student_params", "teacher_params", "world_size"}
PARTS = {f"/{c}/{kind}" for c in COMPONENTS for kind in ("raw", "weight", "scaled")} | {"/total"}
TRAIN_KEYS = STATIC_KEYS | {f"loss{part}" for part in PARTS}
EVAL_KEYS = TRAIN_KEYS | {f"eval{part}" for part in PARTS} | {"eval/ce", "eval/ppl", "eval_train_ratio"}


def student_state(student_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(student_dir).state_dict()


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "zero2"
    student_dir = run_training(make_config(tiny_data_dir, "deepspeed.zero_stage=2"), run_dir, echo=False)
    return run_dir, student_dir


def test_zero2_run_reports_every_step_with_a_consistent_ledger(zero2_run, tiny_data_dir):
    run_dir, _ = zero2_run
    config = make_config(tiny_data_dir, "deepspeed.zero_stage=2")
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [set(r) for r in records] == [EVAL_KEYS if r["step"] % 4 == 0 else TRAIN_KEYS for r in records]
    # Step s trains at progress (s - 1) / 12.
    assert [r["progress"] for r in records] == [(s - 1) / 12 for s in range(1, 13)]
    assert [r["phase"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert {(r["max_steps"], r["world_size"], r["nonfinite_skipped"]) for r in records} == {(12, 2, 0)}
    assert [r["lr"] for r in records] == pytest.approx(scheduled_lrs(config, 12), rel=1e-9, abs=0)
    # Packed text: every token is a label; 2 workers x 4 sequences x 64 tokens a step.
    assert [r["tokens_trained"] for r in records] == [512 * s for s in range(1, 13)]
    assert {r["trained_share"] for r in records} == {1.0}
    assert_ledger_consistent(records)
    for r in records:
        expected = table_weights(r["progress"])
        for c in COMPONENTS:
            assert r[f"loss/{c}/weight"] == pytest.approx(expected[c], abs=1e-12), (r["step"], c)
    # A part whose weight is 0 is not computed (raw exactly 0); a computed one is a positive loss.
    assert [r["loss/feature/raw"] > 0 for r in records] == [False] * 4 + [True] * 8
    assert [r["loss/attention/raw"] > 0 for r in records] == [False] * 8 + [True] * 4
    assert all(r["loss/feature/raw"] == 0.0 for r in records[:4])
    assert all(r["loss/attention/raw"] == 0.0 for r in records[:8])

    evals = [r for r in records if "eval/ppl" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    previous = 0
    for r in evals:
        assert math.isclose(r["eval/ppl"], math.exp(r["eval/ce"]), rel_tol=1e-6)
        for c in COMPONENTS:  # eval uses the weights of the current training progress
            assert r[f"eval/{c}/weight"] == r[f"loss/{c}/weight"]
        # eval/train: the eval total over the mean raw train parts since the last eval, at today's weights.
        window = records[previous : r["step"]]
        train_total = 0.0
        for c in COMPONENTS:
            on = [w[f"loss/{c}/raw"] for w in window if w[f"loss/{c}/weight"] > 0]
            if r[f"loss/{c}/weight"] > 0 and on:
                train_total += r[f"loss/{c}/weight"] * sum(on) / len(on)
        assert r["eval_train_ratio"] == pytest.approx(r["eval/total"] / train_total, rel=1e-9)
        previous = r["step"]
    # The loss falls: plain CE at the end is below the start.
    assert records[-1]["loss/ce/raw"] < records[0]["loss/ce/raw"]
    assert (run_dir / "config.yaml").read_text() == config.to_yaml()


def test_exported_student_loads_with_plain_transformers_and_generates(zero2_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, student_dir = zero2_run
    names = {p.name for p in student_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    # derive.num_layers=2 of the tiny-llama teacher's width 64, over the 512-token vocabulary.
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (2, 64, 512)
    inputs = tokenizer("def main(", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8


def test_checkpoints_hold_deepspeed_format_and_rerun_resumes_to_the_same_student(zero2_run, tiny_data_dir):
    run_dir, student_dir = zero2_run
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert [read_state(c)["step"] for c in checkpoints] == [6, 12]  # checkpoints_to_keep=2
    latest = checkpoints[-1]
    assert (latest / "latest").read_text().strip() == "step_00000012" and (
        latest / "zero_to_fp32.py"
    ).is_file()
    assert sorted(p.name for p in latest.glob("step_00000012/zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",  # one ZeRO partition per rank
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
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
    assert set(student_keys) == {k for k in before if "rotary" not in k}
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
        # The count restored from the step-6 checkpoint carries on: steps 7-8 are not counted twice.
        assert resumed[step]["tokens_trained"] == uninterrupted[step]["tokens_trained"], step
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
    assert sorted(read_state(d)["step"] for d in registered_checkpoints(crashed_dir)) == [8, 12]
    # Plain transformers loads the exported student: the uninterrupted run's weights, to float noise.
    resumed, reference = student_state(student_dir), student_state(zero2_run[1])
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stage", [0, 3])
def test_other_zero_stages_train_save_and_reload(stage, zero2_run, tiny_data_dir, tmp_path):
    config = make_config(
        tiny_data_dir, f"deepspeed.zero_stage={stage}", "train.max_steps=8", "train.checkpoint_every=4"
    )
    run_dir = tmp_path / f"zero{stage}"
    student_dir = run_training(config, run_dir, echo=False)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["phase"] for r in records] == [1, 1, 1, 2, 2, 3, 3, 3]  # progress 0, 1/8, ... 7/8
    assert_ledger_consistent(records)
    assert sorted(read_state(c)["step"] for c in registered_checkpoints(run_dir)) == [4, 8]
    before = student_state(student_dir)
    # ZeRO-3 shards were gathered for the export: every tensor has the zero2 run's student's shape.
    shapes = {k: tuple(v.shape) for k, v in student_state(zero2_run[1]).items()}
    assert {k: tuple(v.shape) for k, v in before.items()} == shapes
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
    listed = read_metrics(run_dir)
    assert [r["step"] for r in listed] == [1, 2, 3, 4, 5, 6]
    records = {r["step"]: r for r in listed}
    assert "loss/total" not in records[2] and records[2]["nonfinite_components"] == "kd"
    assert [r["nonfinite_skipped"] for r in listed] == [0, 1, 1, 1, 2, 3]
    assert [r.get("nonfinite_components") for r in listed] == [None, "kd", None, None, "kd", "kd"]
    assert all(math.isfinite(records[s]["loss/total"]) for s in (1, 3, 4))
    # A skipped step does not advance the LR schedule: step 3 trains at the lr step 2 would have had.
    lrs = scheduled_lrs(config, 8)
    assert [r["lr"] for r in listed] == pytest.approx(
        [lrs[0], lrs[0], lrs[1], lrs[2], lrs[2], lrs[2]], rel=1e-9
    )
    # The checkpoint of step 4 is the last good one and is kept.
    assert [read_state(c)["step"] for c in run_dir.glob("checkpoint_*") if c.is_dir()] == [4]
    assert not (run_dir / "student").exists()
