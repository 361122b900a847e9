"""The loss and curriculum rules (workers/loss_config.py): one test per rule, each naming field and value.

How the run config shows them (`loss.kd_temperature=0.0: must be > 0 and finite`): tests/test_config.py.
"""

import math
import pickle

import pytest

from workers.loss_config import FEATURE_NORMS, KD_KINDS, CurriculumConfig, FieldError, LossConfig

ALPHAS = ("alpha_ce", "alpha_kd", "alpha_feature", "alpha_attention")


def refused(cls, **fields) -> FieldError:
    with pytest.raises(FieldError) as excinfo:
        cls(**fields)
    return excinfo.value


def test_defaults_are_valid_and_as_documented():
    assert LossConfig() == LossConfig(
        alpha_ce=0.3,
        alpha_kd=0.7,
        alpha_feature=1.0,
        alpha_attention=1.0,
        kd_temperature=2.0,
        kd_kind="forward_kl",
        jsd_beta=0.5,
        feature_norm="layernorm",
        layer_map="auto",
    )
    assert CurriculumConfig() == CurriculumConfig(enabled=True, phase1_end=0.3, phase2_end=0.6)


def test_numbers_are_stored_as_floats_and_the_configs_pickle():
    loss = LossConfig(alpha_ce=1, alpha_kd=0, kd_temperature=4, jsd_beta=1)
    assert [type(getattr(loss, name)) for name in (*ALPHAS, "kd_temperature", "jsd_beta")] == [float] * 6
    curriculum = CurriculumConfig(phase1_end=0, phase2_end=1)
    assert (curriculum.phase1_end, curriculum.phase2_end) == (0.0, 1.0)
    assert pickle.loads(pickle.dumps(loss)) == loss
    assert pickle.loads(pickle.dumps(curriculum)) == curriculum


def test_error_names_field_value_and_rule_and_takes_a_prefix():
    error = refused(LossConfig, kd_temperature=0)
    assert isinstance(error, ValueError)
    assert str(error) == "kd_temperature=0.0: must be > 0 and finite"
    assert error.with_prefix("loss.") == "loss.kd_temperature=0.0: must be > 0 and finite"
    assert (error.field, error.value) == ("kd_temperature", 0.0)


# ---------------------------------------------------------------------------------------------
# LossConfig


@pytest.mark.parametrize("name", ALPHAS)
@pytest.mark.parametrize("value", [True, "0.5", None, [1.0]])
def test_alpha_must_be_a_number(name, value):
    error = refused(LossConfig, **{name: value})
    assert (error.field, error.value, error.rule) == (name, value, "must be a number")


@pytest.mark.parametrize("name", ALPHAS)
@pytest.mark.parametrize("value", [-0.1, -1, math.nan, math.inf])
def test_alpha_must_be_non_negative_and_finite(name, value):
    error = refused(LossConfig, **{name: value})
    assert error.field == name
    assert str(error).startswith(f"{name}={float(value)!r}: must be >= 0")


def test_at_least_one_alpha_must_be_positive():
    error = refused(LossConfig, **dict.fromkeys(ALPHAS, 0.0))
    assert str(error) == "alpha_*=[0.0, 0.0, 0.0, 0.0]: at least one must be > 0"
    for name in ALPHAS:  # any single positive weight is enough
        LossConfig(**{**dict.fromkeys(ALPHAS, 0.0), name: 0.5})


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "2"])
def test_kd_temperature_must_be_a_positive_finite_number(value):
    error = refused(LossConfig, kd_temperature=value)
    assert error.field == "kd_temperature"
    assert repr(value) in str(error) or repr(float(value)) in str(error)
    LossConfig(kd_temperature=1e-3)


def test_kd_kind_must_be_a_known_divergence():
    error = refused(LossConfig, kd_kind="kl")
    assert str(error) == "kd_kind='kl': must be one of ['forward_kl', 'reverse_kl', 'jsd']"
    for kind in KD_KINDS:
        assert LossConfig(kd_kind=kind).kd_kind == kind


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, False])
def test_jsd_beta_must_be_in_the_unit_interval(value):
    error = refused(LossConfig, jsd_beta=value)
    assert error.field == "jsd_beta"
    for beta in (0, 0.25, 1):  # both endpoints are valid (they are the two KLs)
        assert LossConfig(jsd_beta=beta).jsd_beta == float(beta)


def test_feature_norm_must_be_a_known_normalisation():
    error = refused(LossConfig, feature_norm="l2")
    assert str(error) == "feature_norm='l2': must be one of ['none', 'layernorm', 'std', 'cosine']"
    for norm in FEATURE_NORMS:
        assert LossConfig(feature_norm=norm).feature_norm == norm


@pytest.mark.parametrize("value", ["uniform", "", 5, None, {"1": 2}])
def test_layer_map_must_be_auto_or_a_list(value):
    error = refused(LossConfig, layer_map=value)
    assert (error.field, error.value) == ("layer_map", value)
    assert "must be 'auto' or a list of [student, teacher] pairs" in str(error)


def test_layer_map_list_must_not_be_empty():
    assert str(refused(LossConfig, layer_map=[])) == "layer_map=[]: must not be empty"


@pytest.mark.parametrize(
    "value",
    [[[1]], [[1, 2, 3]], [[1, -1]], [[1.0, 2]], [[True, 1]], [0, 1], [[1, 2], "ab"], [[1, "2"]]],
)
def test_layer_map_entries_must_be_pairs_of_non_negative_ints(value):
    error = refused(LossConfig, layer_map=value)
    assert str(error) == f"layer_map={value!r}: each entry must be [student_layer, teacher_layer], ints >= 0"
    assert LossConfig(layer_map=[[0, 0], (1, 3)]).layer_map == [[0, 0], (1, 3)]


# ---------------------------------------------------------------------------------------------
# CurriculumConfig


@pytest.mark.parametrize("value", [1, "yes", None])
def test_enabled_must_be_a_bool(value):
    error = refused(CurriculumConfig, enabled=value)
    assert (error.field, error.value, error.rule) == ("enabled", value, "must be true or false")


@pytest.mark.parametrize("name", ["phase1_end", "phase2_end"])
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "soon"])
def test_phase_end_must_be_a_fraction_of_training(name, value):
    # The other boundary at the far end, so only this field's own rule can fail.
    other = {"phase1_end": 0.0} if name == "phase2_end" else {"phase2_end": 1.0}
    error = refused(CurriculumConfig, **{name: value}, **other)
    assert error.field == name
    assert error.rule in ("must be in [0, 1]", "must be a number")


def test_phase1_must_not_end_after_phase2():
    error = refused(CurriculumConfig, phase1_end=0.7, phase2_end=0.5)
    assert str(error) == "phase2_end=0.5: must be >= phase1_end (0.7)"
    assert error.with_prefix("curriculum.") == (
        "curriculum.phase2_end=0.5: must be >= curriculum.phase1_end (0.7)"
    )
    assert CurriculumConfig(phase1_end=0.5, phase2_end=0.5).phase2_end == 0.5  # no phase 2: allowed


def test_every_named_choice_has_a_loss_implementation():
    # The config accepts exactly the kinds and norms the loss code can compute.
    from workers import losses
    from workers.loss_config import FEATURE_NORMS, KD_KINDS

    assert set(losses._DIVERGENCES) == set(KD_KINDS)
    assert set(losses._FEATURE_DISTANCES) == set(FEATURE_NORMS)
