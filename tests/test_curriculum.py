"""The curriculum contract (the phase table in workers/curriculum.py) at and around both phase boundaries."""

import math
import pickle

import pytest

from workers import curriculum
from workers.curriculum import COMPONENTS, CurriculumSchedule
from workers.loss_config import CurriculumConfig, LossConfig

ALPHA = {"ce": 0.3, "kd": 0.7, "feature": 2.0, "attention": 1.5}
EPS = 1e-6


def loss_config(alpha=None):
    return LossConfig(**{f"alpha_{name}": value for name, value in (alpha or ALPHA).items()})


def schedule(p1=0.3, p2=0.6, alpha=None, enabled=True):
    return CurriculumSchedule(
        CurriculumConfig(enabled=enabled, phase1_end=p1, phase2_end=p2), loss_config(alpha)
    )


def contract_table() -> tuple[list[str], list[list[str]]]:
    """The phase table in workers/curriculum.py's docstring (the contract as DESIGN.md states it):
    its header cells and, per phase, the cells of its row."""
    lines = [line.strip() for line in curriculum.__doc__.splitlines() if line.strip().startswith("|")]
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return header, rows


def weights_from_table(progress: float, p1: float, p2: float, alpha: dict[str, float]) -> tuple[int, dict]:
    """The phase and weights the table gives: the one row whose progress condition holds, each cell
    evaluated as written (`p < p1`, `alpha_feature * (p - p1) / (p2 - p1)`, ...)."""
    header, rows = contract_table()
    names = {"p": progress, "p1": p1, "p2": p2, **{f"alpha_{c}": v for c, v in alpha.items()}}
    [row] = [row for row in rows if eval(row[1], {}, names)]  # noqa: S307 - the test's own docstring table
    return int(row[0]), {c: float(eval(cell, {}, names)) for c, cell in zip(header[2:], row[2:])}  # noqa: S307


def test_the_contract_table_has_one_column_per_component_in_order():
    header, rows = contract_table()
    assert header[:2] == ["phase", "progress"]
    assert tuple(header[2:]) == COMPONENTS
    assert [row[0] for row in rows] == ["1", "2", "3"]


@pytest.mark.parametrize(
    "p1, p2, alpha",
    [
        (0.3, 0.6, ALPHA),
        (0.1, 0.9, {"ce": 1.0, "kd": 0.0, "feature": 0.5, "attention": 3.0}),
        (0.0, 0.25, {"ce": 0.0, "kd": 2.0, "feature": 7.0, "attention": 0.1}),
        (0.5, 0.5, ALPHA),  # no phase 2
        (0.2, 1.0, ALPHA),  # phase 3 only at the very end
    ],
)
def test_weights_follow_the_contract_table_in_every_phase(p1, p2, alpha):
    """At 101 points across [0, 1] and just either side of each boundary, the schedule's phase and
    weights are the ones the table's formulas give."""
    s = schedule(p1, p2, alpha)
    points = sorted({k / 100 for k in range(101)} | {b + d for b in (p1, p2) for d in (-EPS, 0.0, EPS)})
    phases = set()
    for p in (x for x in points if 0.0 <= x <= 1.0):
        phase, expected = weights_from_table(p, p1, p2, alpha)
        phases.add(phase)
        assert s.phase(p) == phase, p
        weights = s.weights(p)
        assert list(weights) == list(COMPONENTS)
        assert weights == pytest.approx(expected, rel=1e-12, abs=1e-15), p
    assert phases == ({1, 3} if p1 == p2 else {1, 2, 3} if p1 > 0 else {2, 3})


@pytest.mark.parametrize(
    "progress, phase, feature, attention",
    [
        (0.0, 1, 0.0, 0.0),
        (0.3 - EPS, 1, 0.0, 0.0),
        (0.3, 2, 0.0, 0.0),
        (0.45, 2, 1.0, 0.0),  # midpoint of the ramp: half of alpha_feature=2.0
        (0.6 - EPS, 2, 2.0 * (0.3 - EPS) / 0.3, 0.0),
        (0.6, 3, 2.0, 1.5),
        (1.0, 3, 2.0, 1.5),
    ],
)
def test_weights_at_and_around_boundaries(progress, phase, feature, attention):
    s = schedule()
    w = s.weights(progress)
    assert s.phase(progress) == phase
    assert list(w) == list(COMPONENTS)
    assert w["ce"] == 0.3 and w["kd"] == 0.7
    assert w["feature"] == pytest.approx(feature, abs=1e-12)
    assert w["attention"] == attention
    assert all(type(v) is float for v in w.values())


def test_feature_ramp_is_linear_and_continuous_into_phase3():
    s = schedule()
    ramp = [s.weights(0.3 + 0.3 * k / 10)["feature"] for k in range(10)]
    assert ramp == pytest.approx([2.0 * k / 10 for k in range(10)])
    assert s.weights(0.6 - 1e-12)["feature"] == pytest.approx(s.weights(0.6)["feature"], abs=1e-9)


def test_equal_boundaries_skip_phase2():
    s = schedule(0.5, 0.5)
    assert s.phase(0.5 - EPS) == 1
    assert s.weights(0.5 - EPS) == {"ce": 0.3, "kd": 0.7, "feature": 0.0, "attention": 0.0}
    assert s.phase(0.5) == 3
    assert s.weights(0.5) == ALPHA
    assert {s.phase(k / 100) for k in range(101)} == {1, 3}


def test_phase1_end_zero_starts_in_phase2_or_3():
    ramp = schedule(0.0, 0.5)
    assert ramp.phase(0.0) == 2
    assert ramp.weights(0.0)["feature"] == 0.0
    assert ramp.weights(0.25)["feature"] == pytest.approx(1.0)
    straight = schedule(0.0, 0.0)
    assert straight.phase(0.0) == 3
    assert straight.weights(0.0) == ALPHA


def test_both_boundaries_at_one_reach_phase3_only_at_the_end():
    s = schedule(1.0, 1.0)
    assert s.phase(1.0 - EPS) == 1
    assert s.phase(1.0) == 3


def test_disabled_gives_every_alpha_from_the_start():
    s = schedule(enabled=False)
    for p in (0.0, 0.3 - EPS, 0.3, 0.45, 0.6, 1.0):
        assert s.weights(p) == ALPHA
        assert s.phase(p) == 3


def test_pickles_and_compares_by_value():
    s = schedule()
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s
    assert clone.weights(0.5) == s.weights(0.5)
    assert clone != schedule(enabled=False)


def test_alpha_is_copied_not_aliased():
    loss = loss_config()
    s = CurriculumSchedule(CurriculumConfig(), loss)
    loss.alpha_ce = 99.0
    assert s.weights(0.0)["ce"] == 0.3


@pytest.mark.parametrize("progress", [-0.01, 1.01, math.nan, math.inf])
def test_bad_progress_is_refused_by_name(progress):
    s = schedule()
    for method in (s.weights, s.phase):
        with pytest.raises(ValueError, match="progress") as excinfo:
            method(progress)
        assert str(progress) in str(excinfo.value)
