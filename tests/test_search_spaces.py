"""Every registered search space: each sample, drawn the way Tune draws it, is a valid full config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import tune

import search_spaces
from orchestrator.config import config_from_dict, read_yaml
from orchestrator.dotted import get_dotted
from orchestrator.sweep.schedulers import pbt_mutations
from orchestrator.sweep.trials import apply_params, check_space, keep_phases_left, sample_points, trial_config
from search_spaces import SPACES, get_space
from search_spaces.curriculum import PHASE2_ENDS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 30


def draw(space: dict, n: int, seed: int = 0) -> list[dict]:
    """`n` trial configs drawn the way the Tuner draws them (Tune's own variant generator)."""
    return sample_points(space, n, seed)


def base_configs() -> list[dict]:
    """Resolved dicts of the defaults and of every distillation config in configs/ (a sweep's bases;
    a CE-only config such as the teacher's pre-training has no KD or feature loss to search)."""
    data = [read_yaml(path) for path in sorted((ROOT / "configs").glob("*.yaml"))] + [{}]
    return [config_from_dict(d).to_dict() for d in data if d.get("teacher") != "none"]


def test_registry_names_and_documentation():
    assert set(SPACES) == {"curriculum", "feature_norm", "temperature", "full"}
    for name in SPACES:
        assert search_spaces.DESCRIPTIONS[name]
        assert f"`{name}`" in search_spaces.__doc__
    with pytest.raises(ValueError, match="unknown search space 'nope'; known: curriculum"):
        get_space("nope")
    space = get_space("curriculum")
    space.clear()
    assert get_space("curriculum")  # callers get a copy


def test_full_is_the_union_of_the_parts():
    parts = [get_space(n) for n in ("curriculum", "feature_norm", "temperature")]
    keys = [k for part in parts for k in part]
    assert len(keys) == len(set(keys))
    assert set(get_space("full")) == set(keys)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_sample_is_a_valid_full_config(name):
    space = get_space(name)
    samples = draw(space, SAMPLES)
    bases = base_configs()
    assert len(bases) >= 2
    for base in bases:
        check_space(space, base)
        for sample in samples:
            assert set(sample) == set(space)  # only dotted config keys, no helper keys
            config = trial_config(base, sample, tune_checkpoints=False)  # validates the whole config
            resolved = config.to_dict()
            for key, value in sample.items():
                assert get_dotted(resolved, key) == value
            # the YAML a trial's run dir and best_config.yaml hold loads back as the same config
            assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


def test_curriculum_ordering_holds_by_construction_and_reaches_zero():
    samples = draw(get_space("curriculum"), 400, seed=1)
    pairs = {(s["curriculum.phase1_end"], s["curriculum.phase2_end"]) for s in samples}
    assert all(p1 < p2 or p1 == p2 == 0.0 for p1, p2 in pairs)
    assert (0.0, 0.0) in pairs  # no curriculum is inside the space
    assert any(p1 == 0.0 < p2 for p1, p2 in pairs)
    assert {p2 for _, p2 in pairs} == set(PHASE2_ENDS)
    assert (0.3, 0.6) in pairs  # the seed's boundaries too


def test_samples_repeat_with_the_seed():
    space = get_space("full")
    assert draw(space, 5, seed=3) == draw(space, 5, seed=3)


def test_pbt_mutations_keep_the_curriculum_ordering():
    from orchestrator.sweep.schedulers import Rederive

    mutations, derived = pbt_mutations(get_space("curriculum"))
    assert mutations == {"curriculum.phase2_end": list(PHASE2_ENDS)}
    assert set(derived) == {"curriculum.phase1_end"}
    explore = Rederive(derived)
    np.random.seed(0)
    for p2 in PHASE2_ENDS:
        config = explore({"curriculum.phase2_end": p2, "curriculum.phase1_end": 0.9})
        assert 0.0 <= config["curriculum.phase1_end"] <= p2


def test_space_keys_must_be_per_trial_config_keys():
    from orchestrator.errors import UserError

    base = config_from_dict({}).to_dict()
    with pytest.raises(UserError, match="'loss.nope' is not a config key"):
        check_space({"loss.nope": tune.choice([1])}, base)
    with pytest.raises(UserError, match="shared by all trials"):
        check_space({"data.seq_len": tune.choice([64])}, base)
    with pytest.raises(UserError, match="names a config section"):
        check_space({"loss": tune.choice([1])}, base)


@pytest.mark.parametrize(
    "trained, proposed, step, expected",
    [
        # at step 50 of 100: phase 1 (p1=0.6) not yet left, so both may move, but not into the past
        ((0.6, 0.8), (0.2, 0.3), 50, (0.5, 0.5)),
        ((0.6, 0.8), (0.7, 0.9), 50, (0.7, 0.9)),
        # phase 1 left (p1=0.3 <= progress of step 50's last step): p1 stays, p2 may move forward
        ((0.3, 0.8), (0.1, 0.95), 50, (0.3, 0.95)),
        ((0.3, 0.8), (0.6, 0.4), 50, (0.3, 0.5)),
        # both left: nothing moves, the trial never goes back to an earlier phase
        ((0.1, 0.2), (0.5, 0.9), 50, (0.1, 0.2)),
        # no curriculum (0/0) stays none
        ((0.0, 0.0), (0.3, 0.6), 50, (0.0, 0.0)),
    ],
)
def test_pbt_restarts_only_move_boundaries_forward(trained, proposed, step, expected):
    params = {
        "curriculum.phase1_end": proposed[0],
        "curriculum.phase2_end": proposed[1],
        "loss.kd_kind": "jsd",
    }
    out = keep_phases_left(params, {"phase1_end": trained[0], "phase2_end": trained[1]}, step, 100)
    assert (out["curriculum.phase1_end"], out["curriculum.phase2_end"]) == expected
    assert out["loss.kd_kind"] == "jsd"


def test_apply_params_does_not_touch_the_base():
    base = config_from_dict({}).to_dict()
    out = apply_params(base, {"curriculum.phase1_end": np.float64(0.1)})
    assert type(out["curriculum"]["phase1_end"]) is float
    assert base["curriculum"]["phase1_end"] == 0.3


def test_sweeps_draw_anchors_first_and_no_repeats():
    from search_spaces import get_anchors

    points = sample_points(get_space("curriculum"), 20, 0, get_anchors("curriculum"))
    assert points[0] == {"curriculum.phase1_end": 0.0, "curriculum.phase2_end": 0.0}  # no curriculum first
    keys = [tuple(sorted(p.items())) for p in points]
    assert len(set(keys)) == len(keys) == 20
    # the full space's anchor pins its curriculum keys and samples the rest
    first = sample_points(get_space("full"), 1, 0, get_anchors("full"))[0]
    assert (first["curriculum.phase1_end"], first["curriculum.phase2_end"]) == (0.0, 0.0)
    assert set(first) == set(get_space("full"))
    # a grid multiplies the draws, as in Tune
    grid = {"train.lr": tune.grid_search([1e-3, 2e-3]), **get_space("curriculum")}
    assert len(sample_points(grid, 3, 0)) == 6


def test_pinned_space_covers_every_point():
    from orchestrator.sweep.trials import pinned_space

    points = sample_points(get_space("full"), 8, 1)
    pinned = pinned_space(points)
    assert set(pinned) == set(get_space("full"))
    for point in points:
        assert all(pinned[k].is_valid(v) for k, v in point.items())
