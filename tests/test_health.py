"""The 'no scaled part more than 10x the others' check judges weights, not parts with nothing to learn."""

from __future__ import annotations

from orchestrator.report.health import health_verdict

CHECK = "no scaled part more than 10x the others"


def record(step: int, phase: int, **parts: tuple[float, float]) -> dict:
    """parts: name=(raw, weight)."""
    r = {"step": step, "phase": phase, "lr": 1e-3, "nonfinite_skipped": 0}
    for name, (raw, weight) in parts.items():
        r.update(
            {f"loss/{name}/raw": raw, f"loss/{name}/weight": weight, f"loss/{name}/scaled": raw * weight}
        )
    return r


def dominance(records: list[dict]) -> tuple[bool, str]:
    return {name: (ok, figure) for name, ok, figure in health_verdict(records)}[CHECK]


def test_a_part_near_zero_all_run_is_named_not_judged():
    # configs/tiny.yaml's random teacher: near-uniform logits, so KD is ~0.01 nats from step 1.
    records = [record(s, 1, ce=(6.2, 0.3), kd=(0.009, 0.7)) for s in (5, 10)]
    records.append(record(15, 3, ce=(6.1, 0.3), kd=(0.011, 0.7), feature=(1.9, 1.0), attention=(4e-5, 1.0)))
    ok, figure = dominance(records)
    assert ok, figure
    assert "feature over ce" in figure and "kd, attention near 0 all run" in figure


def test_a_part_with_something_to_learn_is_judged_however_small_its_weight():
    records = [record(5, 3, ce=(6.0, 1.0), kd=(2.0, 0.01))]  # kd 0.02 scaled against ce 6.0
    ok, figure = dominance(records)
    assert not ok and "300x (ce over kd, step 5)" in figure and "near 0" not in figure


def test_the_feature_ramp_of_phase_2_is_not_judged_but_phase_3_is():
    ramping = record(5, 2, ce=(6.0, 1.0), feature=(2.0, 0.01))
    assert dominance([ramping])[0]
    full = record(9, 3, ce=(6.0, 1.0), feature=(2.0, 0.01))
    ok, figure = dominance([ramping, full])
    assert not ok and "(ce over feature, step 9)" in figure


def verdicts(records: list[dict]) -> dict[str, tuple[bool, str]]:
    return {name: (ok, figure) for name, ok, figure in health_verdict(records)}


def with_ledger(r: dict, prefix: str = "loss") -> dict:
    """`r` with its total equal to the sum of its scaled parts under `prefix`."""
    scaled = [v for k, v in r.items() if k.startswith(f"{prefix}/") and k.endswith("/scaled")]
    return {**r, f"{prefix}/total": sum(scaled)}


def test_a_derived_students_small_kd_next_to_ce_passes_and_is_named():
    # student: derived from a trained teacher: KD 0.1 nats from the start, CE 4.7 (47x apart scaled).
    records = [with_ledger(record(s, 1, ce=(4.7, 1.0), kd=(0.1 - s / 1000, 1.0))) for s in (5, 10, 15)]
    records.append(with_ledger(record(20, 3, ce=(4.5, 1.0), kd=(0.09, 1.0), feature=(0.8, 1.0))))
    checked = verdicts(records)
    ok, figure = checked[CHECK]
    assert ok, figure
    assert "ce over feature" in figure and "left out: kd at 4 step(s)" in figure
    judged = ("no non-finite steps", "logged total = sum of scaled parts", "lr logged above 0")
    assert all(checked[name][0] for name in judged), checked


def test_a_kl_part_still_learning_next_to_ce_is_judged():
    # KD at 0.6 is over a tenth of CE (4.7): it has something to learn and its weight drowns it.
    ok, figure = dominance([record(5, 3, ce=(4.7, 1.0), kd=(0.6, 0.05))])
    assert not ok and "157x (ce over kd, step 5): ce drowns kd" in figure


def test_the_seeds_raw_mse_of_4000_swamping_kd_still_fails_with_its_figure():
    r = with_ledger(record(12, 3, ce=(4.7, 1.0), kd=(2.0, 1.0), feature=(4000.0, 1.0)))
    ok, figure = dominance([r])
    assert not ok and figure.startswith(
        "worst 851x (feature over ce, step 12): feature drowns ce (weights or units"
    )


def test_a_total_other_than_the_sum_of_its_parts_fails_naming_the_step():
    good = with_ledger(record(5, 1, ce=(4.0, 1.0), kd=(1.0, 1.0)))
    bad = {**with_ledger(record(10, 1, ce=(4.0, 1.0), kd=(1.0, 1.0))), "loss/total": 5.5}
    assert verdicts([good])["logged total = sum of scaled parts"][0]
    ok, figure = verdicts([good, bad])["logged total = sum of scaled parts"]
    assert (ok, figure) == (False, "train total 5.5 but parts sum to 5 at step 10")


def test_eval_counting_a_part_whose_weight_is_0_fails_the_eval_ledger():
    # Phase 1: feature is off in training, but the eval's total counted its raw MSE.
    r = with_ledger(record(10, 1, ce=(4.0, 1.0), kd=(1.0, 1.0)))
    r.update(
        {"eval/ce/scaled": 4.2, "eval/kd/scaled": 1.1, "eval/feature/raw": 25.0, "eval/feature/weight": 0.0}
    )
    r.update({"eval/feature/scaled": 0.0, "eval/total": 30.3, "eval/ppl": 70.0, "eval_train_ratio": 6.06})
    checked = verdicts([r])
    assert checked["logged total = sum of scaled parts"] == (
        False,
        "eval total 30.3 but parts sum to 5.3 at step 10",
    )
    assert checked["eval/train ratio under 2x"][0] is False


def test_an_lr_logged_as_0_before_the_last_step_fails():
    records = [with_ledger(record(s, 1, ce=(4.0, 1.0))) for s in (1, 2, 3)]
    records[0]["lr"] = 0.0  # a warm-up lr of 7.96e-6 rounded away
    assert verdicts(records)["lr logged above 0"] == (False, "lr 0 at step(s) 1")
    records[0]["lr"], records[-1]["lr"] = 7.96e-6, 0.0  # a cosine to min_lr_ratio 0 ends at 0
    assert verdicts(records)["lr logged above 0"] == (True, "min 0.00e+00")
