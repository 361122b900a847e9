"""DistillationLoss: the curriculum invariants (total is the sum of the parts, a zero-weight part is not
computed, eval uses the training weights), layer maps, and real tiny HF models."""

import math
from types import SimpleNamespace

import pytest
import torch
from tiny_llama import tiny_llama as build_tiny_llama

from workers.curriculum import COMPONENTS, CurriculumSchedule
from workers.distill_loss import DistillationLoss, LossBreakdown, OutputRequest, uniform_layer_map
from workers.loss_config import CurriculumConfig, LossConfig
from workers.losses import attention_loss, ce_loss, feature_loss, kd_loss

ALPHA = {"ce": 0.3, "kd": 0.7, "feature": 1.5, "attention": 2.0}
PHASE1, PHASE2, PHASE3 = 0.1, 0.45, 0.9
S_LAYERS, T_LAYERS, S_WIDTH, T_WIDTH, VOCAB = 2, 4, 32, 48, 128


def tiny_llama(layers, width, seed):
    model = build_tiny_llama(layers, width, VOCAB, seed)
    # transformers 5: sdpa returns no attention maps.
    model.set_attn_implementation("eager")
    return model


@pytest.fixture(scope="module")
def teacher():
    model = tiny_llama(T_LAYERS, T_WIDTH, seed=1).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture
def student():
    return tiny_llama(S_LAYERS, S_WIDTH, seed=0)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (2, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 5:] = 2  # right padding
    attention_mask[1, 5:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def make_loss(alpha=None, enabled=True, **knobs):
    """`knobs`: the other LossConfig fields (kd_temperature, layer_map, ...)."""
    alpha = ALPHA if alpha is None else alpha
    loss = LossConfig(**{f"alpha_{name}": value for name, value in alpha.items()}, **knobs)
    return DistillationLoss(
        loss,
        CurriculumConfig(enabled=enabled, phase1_end=0.3, phase2_end=0.6),
        student_hidden_size=S_WIDTH,
        teacher_hidden_size=T_WIDTH,
        student_num_layers=S_LAYERS,
        teacher_num_layers=T_LAYERS,
    )


def run(model, batch, request, grad=True):
    input_ids, attention_mask, _ = batch
    with torch.set_grad_enabled(grad):
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=request.hidden_states,
            output_attentions=request.attentions,
        )


def step(loss_module, student, teacher, batch, progress):
    request = loss_module.required_outputs(progress)
    student_out = run(student, batch, request)
    teacher_out = run(teacher, batch, request, grad=False)
    _, attention_mask, labels = batch
    return loss_module(student_out, teacher_out, labels, attention_mask, progress), student_out, teacher_out


def assert_total_is_sum_of_scaled(breakdown):
    assert set(breakdown.scaled) == set(breakdown.raw)
    for name, value in breakdown.scaled.items():
        assert torch.equal(value, breakdown.weights[name] * breakdown.raw[name])
    assert torch.allclose(breakdown.total, sum(breakdown.scaled.values()), rtol=1e-6, atol=0)


class Untouchable:
    """Model output whose optional fields fail loudly if read."""

    def __init__(self, logits):
        self.logits = logits

    @property
    def hidden_states(self):
        raise AssertionError("hidden_states was read")

    @property
    def attentions(self):
        raise AssertionError("attentions was read")


# ---------------------------------------------------------------- layer maps


@pytest.mark.parametrize(
    "s, t, expected",
    [
        (2, 4, [(1, 2), (2, 4)]),
        (3, 4, [(1, 1), (2, 2), (3, 4)]),
        (4, 4, [(1, 1), (2, 2), (3, 3), (4, 4)]),
        (1, 6, [(1, 6)]),
    ],
)
def test_uniform_layer_map_examples(s, t, expected):
    assert uniform_layer_map(s, t) == expected


def test_uniform_layer_map_is_last_to_last_and_monotone():
    for s in range(1, 9):
        for t in range(s, 13):
            pairs = uniform_layer_map(s, t)
            assert [p[0] for p in pairs] == list(range(1, s + 1))
            assert pairs[-1] == (s, t)
            teacher_side = [p[1] for p in pairs]
            assert teacher_side == sorted(teacher_side) and teacher_side[0] >= 1


def test_uniform_layer_map_refuses_a_deeper_student():
    with pytest.raises(ValueError, match=r"student_layers \(5\) > teacher_layers \(4\)"):
        uniform_layer_map(5, 4)


@pytest.mark.parametrize("layer_map, needle", [([[3, 1]], "[3, 1]"), ([[1, 5]], "[1, 5]")])
def test_layer_map_beyond_the_model_depths_is_refused(layer_map, needle):
    """The form of layer_map is LossConfig's rule (tests/test_loss_config.py); the depths are known here."""
    with pytest.raises(ValueError, match="out of range") as excinfo:
        make_loss(layer_map=layer_map)
    assert needle in str(excinfo.value)
    assert f"0..{S_LAYERS} for the student and 0..{T_LAYERS} for the teacher" in str(excinfo.value)


def test_map_without_attention_pairs_is_refused_only_when_attention_is_weighted():
    with pytest.raises(ValueError, match="no pair with both indices >= 1"):
        make_loss(layer_map=[[0, 0]])
    module = make_loss(alpha={**ALPHA, "attention": 0.0}, layer_map=[[0, 0]])
    assert module.layer_map == [(0, 0)]


def test_projectors_one_per_pair_student_to_teacher_width():
    module = make_loss(layer_map=[[0, 0], [1, 3], [2, 4]])
    assert module.layer_map == [(0, 0), (1, 3), (2, 4)]
    assert module.attention_pairs == [(1, 3), (2, 4)]
    assert len(module.projectors) == 3
    for projector in module.projectors:
        assert isinstance(projector, torch.nn.Linear)
        assert (projector.in_features, projector.out_features) == (S_WIDTH, T_WIDTH)
    assert len(list(module.parameters())) == 6  # weight + bias each: trained in the engine
    assert make_loss().layer_map == [(1, 2), (2, 4)]


def test_knobs_reach_the_module():
    module = make_loss(
        kd_temperature=3.0, kd_kind="jsd", jsd_beta=0.25, feature_norm="std", layer_map=[[1, 1], [2, 4]]
    )
    assert module.schedule == CurriculumSchedule(
        CurriculumConfig(phase1_end=0.3, phase2_end=0.6),
        LossConfig(alpha_ce=0.3, alpha_kd=0.7, alpha_feature=1.5, alpha_attention=2.0),
    )
    assert (module.kd_temperature, module.kd_kind, module.jsd_beta, module.feature_norm) == (
        3.0,
        "jsd",
        0.25,
        "std",
    )
    assert module.layer_map == [(1, 1), (2, 4)]


# ---------------------------------------------------------------- curriculum and outputs


def test_required_outputs_follow_the_phases():
    module = make_loss()
    assert module.required_outputs(PHASE1) == OutputRequest(hidden_states=False, attentions=False)
    assert module.required_outputs(PHASE2) == OutputRequest(hidden_states=True, attentions=False)
    assert module.required_outputs(PHASE3) == OutputRequest(hidden_states=True, attentions=True)
    # p == p1: ramp starts at 0, so the hidden states are not needed yet.
    assert module.required_outputs(0.3) == OutputRequest(hidden_states=False, attentions=False)
    assert make_loss(enabled=False).required_outputs(0.0) == OutputRequest(
        hidden_states=True, attentions=True
    )
    assert module.weights(PHASE2) == module.schedule.weights(PHASE2)


def test_phase1_never_reads_hidden_states_or_attentions(student, teacher, batch):
    module = make_loss()
    request = module.required_outputs(PHASE1)
    student_out = run(student, batch, request)
    teacher_out = run(teacher, batch, request, grad=False)
    assert student_out.hidden_states is None and student_out.attentions is None
    _, attention_mask, labels = batch
    breakdown = module(student_out, teacher_out, labels, attention_mask, PHASE1)
    assert set(breakdown.raw) == {"ce", "kd"}
    guarded = module(
        Untouchable(student_out.logits), Untouchable(teacher_out.logits), labels, attention_mask, PHASE1
    )
    assert torch.equal(guarded.total, breakdown.total)


def test_zero_weight_component_is_not_computed():
    logits = torch.randn(2, 8, VOCAB)
    labels = torch.randint(0, VOCAB, (2, 8))
    module = make_loss(alpha={**ALPHA, "kd": 0.0, "attention": 0.0}, enabled=False)
    hidden = tuple(torch.randn(2, 8, S_WIDTH) for _ in range(S_LAYERS + 1))
    teacher_hidden = tuple(torch.randn(2, 8, T_WIDTH) for _ in range(T_LAYERS + 1))
    student_out = SimpleNamespace(logits=logits, hidden_states=hidden, attentions=None)
    # The teacher's logits are not needed either: kd has weight 0.
    teacher_out = SimpleNamespace(hidden_states=teacher_hidden, attentions=None)
    breakdown = module(student_out, teacher_out, labels, None, 0.5)
    assert set(breakdown.raw) == {"ce", "feature"}
    assert breakdown.weights == {"ce": 0.3, "kd": 0.0, "feature": 1.5, "attention": 0.0}
    # ce averages over the 2 x 7 shifted targets, the other parts over all 2 x 8 tokens.
    assert module.token_counts(labels, None) == {"ce": 14, "kd": 16, "feature": 16, "attention": 16}


def test_teacher_may_be_none_when_only_ce_is_weighted(student, batch):
    module = make_loss(alpha={**ALPHA, "kd": 0.0})
    student_out = run(student, batch, module.required_outputs(PHASE1))
    _, attention_mask, labels = batch
    breakdown = module(student_out, None, labels, attention_mask, PHASE1)
    assert set(breakdown.raw) == {"ce"}
    assert torch.equal(breakdown.total, 0.3 * ce_loss(student_out.logits, labels))
    with pytest.raises(ValueError, match=r"teacher_out is None.*'kd'"):
        make_loss()(student_out, None, labels, attention_mask, PHASE1)


def test_all_zero_weights_give_a_zero_total_that_backpropagates(student, batch):
    module = make_loss(alpha={"ce": 0.0, "kd": 0.0, "feature": 1.0, "attention": 0.0})
    student_out = run(student, batch, module.required_outputs(PHASE1))
    breakdown = module(student_out, None, batch[2], batch[1], PHASE1)
    assert breakdown.raw == {} and breakdown.total.item() == 0.0
    breakdown.total.backward()
    assert breakdown.to_metrics()["loss/total"] == 0.0


def test_needs_teacher_exactly_when_a_teacher_part_is_weighted():
    ce_then_feature = make_loss(alpha={**ALPHA, "kd": 0.0, "attention": 0.0})
    assert ce_then_feature.needs_teacher(PHASE1) is False  # ce alone
    assert ce_then_feature.needs_teacher(0.3) is False  # the feature ramp starts at weight 0
    assert ce_then_feature.needs_teacher(PHASE2) is True
    assert make_loss().needs_teacher(PHASE1) is True  # kd
    assert make_loss(alpha={**ALPHA, "ce": 0.0, "kd": 0.0, "feature": 0.0}).needs_teacher(PHASE3) is True
    assert (
        make_loss(alpha={**ALPHA, "kd": 0.0, "feature": 0.0, "attention": 0.0}).needs_teacher(PHASE3) is False
    )


# ---------------------------------------------------------------- real tiny models, phase 3


def test_phase3_with_real_models_matches_the_parts_and_backpropagates(student, teacher, batch):
    module = make_loss(layer_map=[[0, 0], [1, 2], [2, 4]])
    assert module.required_outputs(PHASE3) == OutputRequest(hidden_states=True, attentions=True)
    breakdown, student_out, teacher_out = step(module, student, teacher, batch, PHASE3)
    assert len(student_out.hidden_states) == S_LAYERS + 1 and len(student_out.attentions) == S_LAYERS

    assert set(breakdown.raw) == set(COMPONENTS)
    assert_total_is_sum_of_scaled(breakdown)
    _, attention_mask, labels = batch
    mask = attention_mask.bool()
    ce_targets = int((labels[:, 1:] != -100).sum())
    assert module.token_counts(labels, attention_mask) == {
        "ce": ce_targets,
        "kd": 13,
        "feature": 13,
        "attention": 13,
    }
    assert torch.equal(breakdown.raw["ce"], ce_loss(student_out.logits, labels))
    assert torch.equal(breakdown.raw["kd"], kd_loss(student_out.logits, teacher_out.logits, 2.0, mask=mask))
    features = [
        feature_loss(proj(student_out.hidden_states[s]), teacher_out.hidden_states[t], mask=mask)
        for proj, (s, t) in zip(module.projectors, module.layer_map)
    ]
    assert torch.allclose(breakdown.raw["feature"], torch.stack(features).mean())
    # The (0, 0) embeddings pair has no attention map; layer L's map is attentions[L - 1].
    attentions = [
        attention_loss(student_out.attentions[0], teacher_out.attentions[1], mask),
        attention_loss(student_out.attentions[1], teacher_out.attentions[3], mask),
    ]
    assert torch.allclose(breakdown.raw["attention"], torch.stack(attentions).mean())
    assert all(breakdown.raw[name].item() > 0 for name in COMPONENTS)

    breakdown.total.backward()
    student_grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in student_grads)
    assert student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    for projector in module.projectors:
        assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("progress", [PHASE1, PHASE2, PHASE3])
def test_total_is_sum_of_scaled_parts_in_train_and_eval(student, teacher, batch, progress):
    module = make_loss()
    for mode in ("train", "eval"):
        student.train(mode == "train")
        module.train(mode == "train")
        breakdown, _, _ = step(module, student, teacher, batch, progress)
        assert_total_is_sum_of_scaled(breakdown)
        metrics = breakdown.to_metrics()
        parts = sum(metrics[f"loss/{c}/scaled"] for c in COMPONENTS)
        assert metrics["loss/total"] == pytest.approx(parts, rel=1e-6)


def test_eval_uses_the_same_weights_as_training_at_the_same_progress(student, teacher, batch):
    module = make_loss()
    train_breakdown, _, _ = step(module, student, teacher, batch, PHASE2)
    module.eval()
    with torch.no_grad():
        eval_breakdown, _, _ = step(module, student.eval(), teacher, batch, PHASE2)
    assert eval_breakdown.weights == train_breakdown.weights
    assert set(eval_breakdown.raw) == set(train_breakdown.raw) == {"ce", "kd", "feature"}


def test_planted_nan_is_reported_by_name_and_stays_in_its_component(student, teacher, batch):
    module = make_loss()
    request = module.required_outputs(PHASE3)
    student_out = run(student, batch, request)
    teacher_out = run(teacher, batch, request, grad=False)
    hidden = list(teacher_out.hidden_states)
    hidden[4] = hidden[4].clone()
    hidden[4][0, 0, 0] = math.nan
    teacher_out.hidden_states = tuple(hidden)
    _, attention_mask, labels = batch
    breakdown = module(student_out, teacher_out, labels, attention_mask, PHASE3)
    assert breakdown.nonfinite() == ["feature"]
    for name in ("ce", "kd", "attention"):
        assert torch.isfinite(breakdown.raw[name])
    assert not torch.isfinite(breakdown.total)


def test_missing_attentions_asks_for_eager_attention(student, teacher, batch):
    module = make_loss()
    request = OutputRequest(hidden_states=True, attentions=False)
    student_out = run(student, batch, request)
    teacher_out = run(teacher, batch, request, grad=False)
    _, attention_mask, labels = batch
    with pytest.raises(RuntimeError, match="eager"):
        module(student_out, teacher_out, labels, attention_mask, PHASE3)


def test_real_sdpa_model_fails_loudly_instead_of_silently_skipping_attention(student, teacher, batch):
    """transformers 5: sdpa + output_attentions=True logs a warning and returns an empty tuple."""
    module = make_loss()
    request = module.required_outputs(PHASE3)
    student.set_attn_implementation("sdpa")
    student_out = run(student, batch, request)
    assert len(student_out.attentions) == 0
    teacher_out = run(teacher, batch, request, grad=False)
    with pytest.raises(RuntimeError, match=r"student_out\.attentions is empty.*eager"):
        module(student_out, teacher_out, batch[2], batch[1], PHASE3)


def test_missing_hidden_states_asks_for_output_hidden_states(student, teacher, batch):
    module = make_loss()
    request = OutputRequest(hidden_states=False, attentions=False)
    student_out = run(student, batch, request)
    teacher_out = run(teacher, batch, request, grad=False)
    with pytest.raises(RuntimeError, match="output_hidden_states=True"):
        module(student_out, teacher_out, batch[2], batch[1], PHASE2)


# ---------------------------------------------------------------- LossBreakdown


def test_to_metrics_has_every_component_as_python_floats():
    raw = {"ce": torch.tensor(2.0, requires_grad=True), "kd": torch.tensor(1.5)}
    weights = {"ce": 0.5, "kd": 1.0, "feature": 0.0, "attention": 0.0}
    scaled = {name: weights[name] * value for name, value in raw.items()}
    breakdown = LossBreakdown(total=sum(scaled.values()), raw=raw, weights=weights, scaled=scaled)
    metrics = breakdown.to_metrics("eval")
    assert metrics == {
        "eval/total": 2.5,
        "eval/ce/raw": 2.0,
        "eval/ce/weight": 0.5,
        "eval/ce/scaled": 1.0,
        "eval/kd/raw": 1.5,
        "eval/kd/weight": 1.0,
        "eval/kd/scaled": 1.5,
        "eval/feature/raw": 0.0,
        "eval/feature/weight": 0.0,
        "eval/feature/scaled": 0.0,
        "eval/attention/raw": 0.0,
        "eval/attention/weight": 0.0,
        "eval/attention/scaled": 0.0,
    }
    assert all(type(v) is float for v in metrics.values())
    assert breakdown.nonfinite() == []
    breakdown.raw["kd"] = torch.tensor(math.inf)
    assert breakdown.nonfinite() == ["kd"]


def test_a_bf16_teacher_gives_fp32_losses_close_to_the_fp32_teachers(student, batch):
    """deepspeed.teacher_precision auto runs the frozen teacher in bf16 beside an fp32 student on
    hardware with native bf16: every part is computed in fp32 and moves by well under 1%."""
    import copy

    fp32_teacher = tiny_llama(T_LAYERS, T_WIDTH, seed=1).eval().requires_grad_(False)
    bf16_teacher = copy.deepcopy(fp32_teacher).to(torch.bfloat16)
    loss_module = make_loss()
    fp32, _, _ = step(loss_module, student, fp32_teacher, batch, PHASE3)
    bf16, student_out, teacher_out = step(loss_module, student, bf16_teacher, batch, PHASE3)
    assert teacher_out.logits.dtype == torch.bfloat16 and student_out.logits.dtype == torch.float32
    assert bf16.total.dtype == torch.float32
    for name in COMPONENTS:
        got, want = bf16.raw[name].item(), fp32.raw[name].item()
        assert math.isclose(got, want, rel_tol=0.02, abs_tol=1e-3), (name, got, want)
    bf16.total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())
