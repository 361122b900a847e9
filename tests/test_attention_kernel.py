"""`train.attn_implementation`: which attention kernel the student and the teacher run.

"auto" runs sdpa and switches to eager only while the attention loss needs maps; "eager" stays
eager. Both kernels must give the same numbers, so the choice is a speed knob only."""

import pytest
import torch
from tiny_llama import tiny_llama as build_tiny_llama

from workers.attention import kernel_for
from workers.distill_loss import DistillationLoss, OutputRequest
from workers.loss_config import CurriculumConfig, LossConfig
from workers.step import _teacher_outputs
from workers.student_module import StudentWithLoss, base_attention, model_outputs

WIDTH, LAYERS, VOCAB = 32, 2, 128
NO_MAPS = OutputRequest(hidden_states=False, attentions=False)
MAPS = OutputRequest(hidden_states=True, attentions=True)


def tiny_llama(seed: int = 0):
    return build_tiny_llama(LAYERS, WIDTH, VOCAB, seed)


def kernel(model) -> str:
    return model.config._attn_implementation


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (2, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:] = 0  # right padding: the mask must mean the same to both kernels
    return input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, -100)


def test_settings_map_to_the_kernel_used_without_attention_maps():
    model = tiny_llama()
    assert kernel_for(model, base_attention("auto")) == "sdpa"
    assert kernel_for(model, base_attention("eager")) == "eager"
    assert kernel_for(model, base_attention("sdpa")) == "sdpa"


def test_auto_switches_to_eager_for_attention_maps_and_back_to_sdpa(batch):
    model = tiny_llama()
    input_ids, attention_mask, _ = batch
    model_outputs(model, input_ids, attention_mask, NO_MAPS, base_attention("auto"))
    assert kernel(model) == "sdpa"
    out = model_outputs(model, input_ids, attention_mask, MAPS, base_attention("auto"))
    assert kernel(model) == "eager" and len(out.attentions) == LAYERS
    model_outputs(model, input_ids, attention_mask, NO_MAPS, base_attention("auto"))
    assert kernel(model) == "sdpa"


def test_eager_stays_eager_without_attention_maps(batch):
    model = tiny_llama()
    input_ids, attention_mask, _ = batch
    model_outputs(model, input_ids, attention_mask, NO_MAPS, base_attention("eager"))
    assert kernel(model) == "eager"


def test_both_kernels_give_the_same_logits_and_gradients(batch):
    input_ids, attention_mask, labels = batch
    results = {}
    for name in ("sdpa", "eager"):
        model = tiny_llama(seed=3)
        out = model_outputs(model, input_ids, attention_mask, NO_MAPS, name)
        assert kernel(model) == name
        loss = torch.nn.functional.cross_entropy(
            out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100
        )
        loss.backward()
        results[name] = (out.logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad)
    valid = attention_mask.bool()
    torch.testing.assert_close(results["eager"][0][valid], results["sdpa"][0][valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["eager"][1], results["sdpa"][1], rtol=1e-4, atol=1e-6)


def test_the_setting_reaches_the_student_and_the_teacher_in_a_distillation_step(batch):
    """Phase 1 (CE + KD) needs no maps: with "eager" both models still run eager."""
    input_ids, attention_mask, labels = batch
    loss = DistillationLoss(
        LossConfig(alpha_ce=0.3, alpha_kd=0.7, alpha_feature=1.0, alpha_attention=1.0),
        CurriculumConfig(phase1_end=0.3, phase2_end=0.6),
        student_hidden_size=WIDTH,
        teacher_hidden_size=WIDTH,
        student_num_layers=LAYERS,
        teacher_num_layers=LAYERS,
    )
    for setting, expected in (("eager", "eager"), ("auto", "sdpa")):
        student, teacher = tiny_llama(seed=0), tiny_llama(seed=1).eval().requires_grad_(False)
        module = StudentWithLoss(student, loss, setting)
        teacher_out = _teacher_outputs(
            teacher, {"input_ids": input_ids, "attention_mask": attention_mask}, module, 0.1
        )
        module(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            teacher_out=teacher_out,
            progress=0.1,
        )
        assert (kernel(student), kernel(teacher)) == (expected, expected)
