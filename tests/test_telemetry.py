"""Driver-side telemetry: the console progress line, the ledger, and metrics.jsonl.

`MetricsCallback` is exercised directly (`after_report(None, [record], None)`): no Ray cluster.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.train import telemetry
from orchestrator.train.telemetry import (
    METRICS_FILE,
    MetricsCallback,
    ledger,
    phase_announcement,
    progress_line,
    read_metrics,
)


def record(step: int = 10, phase: int = 1, **extra) -> dict:
    """A record shaped like the worker loop's report (phase 1 weights unless given)."""
    base = {
        "step": step,
        "max_steps": 100,
        "progress": step / 100,
        "phase": phase,
        "lr": 1e-3,
        "tokens_per_s": 1234.0,
        "nonfinite_skipped": 0,
        "loss/total": 2.0,
        "loss/ce/raw": 3.0,
        "loss/ce/weight": 0.3,
        "loss/ce/scaled": 0.9,
        "loss/kd/raw": 1.5,
        "loss/kd/weight": 0.7,
        "loss/kd/scaled": 1.05,
        "loss/feature/raw": 0.0,
        "loss/feature/weight": 0.0,
        "loss/feature/scaled": 0.0,
        "loss/attention/raw": 0.0,
        "loss/attention/weight": 0.0,
        "loss/attention/scaled": 0.0,
    }
    base.update(extra)
    return base


# ---------------------------------------------------------------------------------------------
# progress_line


@pytest.mark.parametrize(
    ("lr", "shown"),
    [(7.96e-06, "lr 7.96e-06"), (1e-3, "lr 1.00e-03"), (3e-4, "lr 3.00e-04"), (1.5e-9, "lr 1.50e-09")],
)
def test_lr_is_printed_in_scientific_notation(lr, shown):
    line = progress_line(record(lr=lr), None)
    assert shown in line
    assert "lr 0.00" not in line


def test_warmup_lr_does_not_print_as_zero():
    line = progress_line(record(lr=7.96e-06), None)
    assert "7.96e-06" in line
    assert "0.00e+00" not in line


def test_line_shows_step_phase_and_percent():
    line = progress_line(record(step=25, phase=1), None)
    assert "[phase 1]" in line
    assert "step 25/100 (25%)" in line


def test_line_shows_each_nonzero_weight_part_and_the_total():
    line = progress_line(record(), None)
    assert "loss 2 = ce 0.9 + kd 1.05" in line
    assert "feature" not in line
    assert "attention" not in line


def test_line_shows_later_phase_parts_once_their_weight_is_nonzero():
    rec = record(
        phase=3,
        **{
            "loss/feature/weight": 1.0,
            "loss/feature/scaled": 0.25,
            "loss/attention/weight": 0.5,
            "loss/attention/scaled": 0.125,
        },
    )
    line = progress_line(rec, None)
    assert "ce 0.9 + kd 1.05 + feature 0.25 + attention 0.125" in line


def test_small_parts_keep_their_digits():
    rec = record(**{"loss/kd/scaled": 4.2e-5})
    assert "kd 4.20e-05" in progress_line(rec, None)


def test_eval_ppl_and_ratio_shown_only_when_present():
    assert "eval ppl" not in progress_line(record(), None)
    line = progress_line(record(**{"eval/ppl": 33.4, "eval_train_ratio": 1.31}), None)
    assert "eval ppl 33.4 ratio 1.31" in line


@pytest.mark.parametrize(("eta", "shown"), [(0, "eta 0m00s"), (125, "eta 2m05s"), (3725, "eta 1h02m")])
def test_eta_is_shown(eta, shown):
    assert shown in progress_line(record(), eta)


def test_no_eta_before_there_is_a_rate():
    assert "eta" not in progress_line(record(), None)


def test_skipped_step_is_said_plainly():
    rec = record(nonfinite_skipped=3)
    del rec["loss/total"]
    line = progress_line(rec, None)
    assert "step skipped (non-finite)" in line
    assert "skipped 3" in line


def test_tokens_per_second_shown():
    assert "1,234 tok/s" in progress_line(record(), None)


def test_the_trained_share_is_shown_only_below_all_tokens():
    assert "trained" not in progress_line(record(trained_share=1.0), None)
    assert "trained" not in progress_line(record(), None)  # records from before the metric
    assert "1,234 tok/s (37% trained)" in progress_line(record(trained_share=0.3749), None)
    # Floored: a share just under 100% must not read as every token.
    assert "(99% trained)" in progress_line(record(trained_share=0.997), None)


def test_phase_announcement_gives_the_new_weights():
    text = phase_announcement(record(step=30, phase=2, **{"loss/feature/weight": 0.05}))
    assert "in phase 2 at step 30" in text
    assert "ce=0.3" in text and "kd=0.7" in text and "feature=0.05" in text and "attention=0" in text


# ---------------------------------------------------------------------------------------------
# ledger


def _sum_row(text: str) -> list[str]:
    rows = [row for row in text.splitlines() if row.strip().startswith("sum")]
    assert len(rows) == 1
    return rows[0].split()


def test_ledger_has_raw_weight_scaled_per_part():
    text = ledger(record())
    ce_row = next(row for row in text.splitlines() if row.strip().startswith("ce"))
    assert ce_row.split() == ["ce", "3", "0.3", "0.9"]
    kd_row = next(row for row in text.splitlines() if row.strip().startswith("kd"))
    assert kd_row.split() == ["kd", "1.5", "0.7", "1.05"]


def test_ledger_shows_the_sum_next_to_the_reported_total():
    fields = _sum_row(ledger(record(**{"loss/total": 1.95})))
    assert fields[1] == "1.95"  # 0.9 + 1.05
    assert fields[-1] == "1.95"
    assert "reported total" in " ".join(fields)


def test_ledger_makes_a_mismatch_visible():
    fields = _sum_row(ledger(record(**{"loss/total": 7.5})))
    assert fields[1] == "1.95"
    assert fields[-1] == "7.5"


def test_ledger_for_eval_prefix():
    rec = {"eval/total": 0.5, "eval/ce/raw": 2.0, "eval/ce/weight": 0.25, "eval/ce/scaled": 0.5}
    fields = _sum_row(ledger(rec, prefix="eval"))
    assert fields[1] == "0.5" and fields[-1] == "0.5"


# ---------------------------------------------------------------------------------------------
# MetricsCallback: metrics.jsonl


def steps_in(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)]


def test_after_report_appends_json_lines(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    for step in (5, 10, 15):
        callback.after_report(None, [record(step=step)], None)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 10, 15]
    assert json.loads(lines[0]) == record(step=5)


def test_after_report_creates_the_run_dir(tmp_path):
    run_dir = tmp_path / "new" / "run"
    MetricsCallback(str(run_dir), echo=False).after_report(None, [record(step=1)], None)
    assert steps_in(run_dir) == [1]


def test_rank_zero_record_is_written_and_private_keys_dropped(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    rank0 = record(step=5, _internal="x")
    rank1 = record(step=5, lr=0.5)
    callback.after_report(None, [rank0, rank1], None)
    (written,) = read_metrics(tmp_path)
    assert "_internal" not in written
    assert written["lr"] == 1e-3


def test_reports_without_a_step_are_ignored(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    callback.after_report(None, [], None)
    callback.after_report(None, [{"loss/total": 1.0}], None)
    assert not (tmp_path / METRICS_FILE).exists()


def test_replayed_step_drops_records_at_and_after_it(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    for step in (5, 10, 15, 20):
        callback.after_report(None, [record(step=step, lr=0.001)], None)
    # A worker restart replays from the step-10 checkpoint.
    callback.after_report(None, [record(step=10, lr=0.002)], None)
    callback.after_report(None, [record(step=15, lr=0.002)], None)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [5, 10, 15]
    assert [r["lr"] for r in records] == [0.001, 0.002, 0.002]


def test_replay_of_the_last_step_keeps_one_copy(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    callback.after_report(None, [record(step=5)], None)
    callback.after_report(None, [record(step=10, lr=0.001)], None)
    callback.after_report(None, [record(step=10, lr=0.002)], None)
    assert steps_in(tmp_path) == [5, 10]
    assert read_metrics(tmp_path)[-1]["lr"] == 0.002


def test_resume_in_a_new_process_keeps_each_step_once(tmp_path):
    first = MetricsCallback(str(tmp_path), echo=False)
    for step in (5, 10, 15):
        first.after_report(None, [record(step=step)], None)
    # The driver died after step 15 was logged; the last checkpoint was at step 10.
    second = MetricsCallback(str(tmp_path), echo=False)
    for step in (10, 15, 20):
        second.after_report(None, [record(step=step)], None)
    assert steps_in(tmp_path) == [5, 10, 15, 20]


def test_a_half_written_last_line_is_dropped_and_the_step_logged_again(tmp_path):
    first = MetricsCallback(str(tmp_path), echo=False)
    for step in (5, 10):
        first.after_report(None, [record(step=step)], None)
    # The driver was killed while appending step 15's line.
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record(step=15))[:40])
    assert steps_in(tmp_path) == [5, 10]
    second = MetricsCallback(str(tmp_path), echo=False)
    for step in (15, 20):
        second.after_report(None, [record(step=step)], None)
    assert steps_in(tmp_path) == [5, 10, 15, 20]
    assert (tmp_path / METRICS_FILE).read_text().endswith("\n")


def test_a_corrupt_line_before_the_last_is_not_hidden(tmp_path):
    (tmp_path / METRICS_FILE).write_text(
        json.dumps(record(step=5)) + "\n{oops\n" + json.dumps(record(step=10)) + "\n"
    )
    with pytest.raises(json.JSONDecodeError):
        read_metrics(tmp_path)


def test_replay_rewrites_the_file_in_one_step_leaving_no_temp_file(tmp_path):
    callback = MetricsCallback(str(tmp_path), echo=False)
    for step in (5, 10, 15, 10):
        callback.after_report(None, [record(step=step)], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
    assert read_metrics(tmp_path) == []
    assert read_metrics(tmp_path / METRICS_FILE) == []


# ---------------------------------------------------------------------------------------------
# MetricsCallback: the console


def test_echo_prints_a_progress_line_per_report(tmp_path, capsys):
    callback = MetricsCallback(str(tmp_path))
    callback.after_report(None, [record(step=10, lr=7.96e-06)], None)
    out = capsys.readouterr().out
    assert "step 10/100" in out
    assert "lr 7.96e-06" in out


def test_echo_off_prints_nothing(tmp_path, capsys):
    MetricsCallback(str(tmp_path), echo=False).after_report(None, [record()], None)
    assert capsys.readouterr().out == ""


def test_eta_from_the_observed_rate(tmp_path, capsys, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: next(clock))
    callback = MetricsCallback(str(tmp_path))
    callback.after_report(None, [record(step=10)], None)
    first = capsys.readouterr().out
    assert "eta" not in first
    callback.after_report(None, [record(step=20)], None)
    # 10 steps in 10 s, 80 steps to go.
    assert "eta 1m20s" in capsys.readouterr().out


def test_eta_of_a_shared_prefix_counts_to_its_stop_step(tmp_path, capsys, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: next(clock))
    callback = MetricsCallback(str(tmp_path))
    callback.after_report(None, [record(step=10, stop_step=30)], None)
    callback.after_report(None, [record(step=20, stop_step=30)], None)
    # 10 steps in 10 s, 10 steps to go before the prefix run stops (not 80 to max_steps).
    out = capsys.readouterr().out
    assert "step 20/100" in out and "eta 0m10s" in out


def test_each_phase_transition_is_announced_once(tmp_path, capsys):
    callback = MetricsCallback(str(tmp_path))
    for step, phase in [(10, 1), (20, 1), (30, 2), (40, 2), (60, 3), (70, 3)]:
        callback.after_report(None, [record(step=step, phase=phase)], None)
    out = capsys.readouterr().out
    assert out.count("== in phase") == 3
    assert "in phase 1 at step 10" in out
    assert "in phase 2 at step 30" in out
    assert "in phase 3 at step 60" in out


def test_resume_within_a_phase_is_not_announced_again(tmp_path, capsys):
    first = MetricsCallback(str(tmp_path))
    for step, phase in [(10, 1), (30, 2), (40, 2)]:
        first.after_report(None, [record(step=step, phase=phase)], None)
    capsys.readouterr()
    second = MetricsCallback(str(tmp_path))
    second.after_report(None, [record(step=40, phase=2)], None)
    assert "== in phase" not in capsys.readouterr().out


def test_nonfinite_components_are_named(tmp_path, capsys):
    rec = record(step=10, nonfinite_skipped=1, nonfinite_components="kd,feature")
    del rec["loss/total"]
    MetricsCallback(str(tmp_path)).after_report(None, [rec], None)
    out = capsys.readouterr().out
    assert "non-finite loss in: kd,feature" in out


def test_ledger_printed_every_debug_interval(tmp_path, capsys):
    callback = MetricsCallback(str(tmp_path), debug_every=20)
    callback.after_report(None, [record(step=10)], None)
    assert "reported total" not in capsys.readouterr().out
    callback.after_report(None, [record(step=20)], None)
    assert "reported total" in capsys.readouterr().out


def test_no_ledger_without_a_debug_interval(tmp_path, capsys):
    MetricsCallback(str(tmp_path)).after_report(None, [record(step=20)], None)
    assert "reported total" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# A run without a curriculum: no phase words on the console, `phase` still in metrics.jsonl


def ce_only(step: int) -> dict:
    """A record of a teacher-less (CE-only) run: the schedule sits in phase 3 from step 0."""
    rec = record(step=step, phase=3)
    for c in ("kd", "feature", "attention"):
        rec.update({f"loss/{c}/raw": 0.0, f"loss/{c}/weight": 0.0, f"loss/{c}/scaled": 0.0})
    rec.update({"loss/ce/raw": 2.0, "loss/ce/weight": 1.0, "loss/ce/scaled": 2.0})
    return rec


def test_no_curriculum_prints_no_phase_words(tmp_path, capsys):
    callback = MetricsCallback(str(tmp_path), phases=False)
    for step in (10, 20):
        callback.after_report(None, [ce_only(step)], None)
    out = capsys.readouterr().out
    assert out.count("step ") == 2 and "step 20/100 (20%) | loss 2 = ce 2 |" in out
    assert "phase" not in out
    assert [r["phase"] for r in read_metrics(tmp_path)] == [3, 3]


def test_progress_line_without_phases_starts_at_the_step():
    assert progress_line(ce_only(10), None, phases=False).startswith("step 10/100 (10%) | loss 2 = ce 2")


@pytest.mark.parametrize(
    ("teacher", "enabled", "shown"),
    [("gpt2", True, True), ("gpt2", False, False), ("none", True, False), ("none", False, False)],
)
def test_phases_are_shown_only_when_a_curriculum_schedules_a_teacher(teacher, enabled, shown):
    from orchestrator.config import config_from_dict

    data = {"teacher": teacher, "student": "preset:tiny-llama", "curriculum": {"enabled": enabled}}
    if teacher == "none":
        data["loss"] = {"alpha_kd": 0.0, "alpha_feature": 0.0, "alpha_attention": 0.0}
    assert telemetry.shows_phases(config_from_dict(data)) is shown


def test_missing_eval_ratio_prints_na():
    line = progress_line(record(**{"eval/ppl": 33.4}), None)
    assert "eval ppl 33.4 ratio n/a" in line
