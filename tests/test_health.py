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
