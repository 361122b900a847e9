"""workers.models.derive_student over two families with different attribute names: GPT-2 (n_layer,
n_embd, n_head, n_inner) and Llama (the standard names). Tiny configs, no hub."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.tiny_llama import tiny_llama
from workers.models import ModelSetupError, derive_student, hidden_size, num_layers

WIDTH, VOCAB = 32, 64


def tiny_gpt2(layers: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=WIDTH,
        n_layer=layers,
        n_head=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    return transformers.GPT2LMHeadModel(config)


TEACHERS = {"gpt2": lambda: tiny_gpt2(4), "llama": lambda: tiny_llama(4, WIDTH, VOCAB, seed=0)}


def derive(num_layers: int, **widths) -> dict:
    return {"num_layers": num_layers, "hidden_size": None, "intermediate_size": None, **widths}


def layers_of(model) -> torch.nn.ModuleList:
    return model.transformer.h if isinstance(model, transformers.GPT2LMHeadModel) else model.model.layers


@pytest.mark.parametrize("family", sorted(TEACHERS))
def test_same_width_student_copies_the_spaced_teacher_layers(family):
    teacher = TEACHERS[family]()
    student = derive_student(teacher, derive(2), seed=1)
    assert type(student) is type(teacher)
    assert num_layers(student) == 2 and hidden_size(student) == WIDTH
    assert len(layers_of(student)) == 2
    # Student layer j (1-based) starts as teacher layer j * 4 // 2: layers 2 and 4.
    for j, source in ((0, 1), (1, 3)):
        s_state, t_state = layers_of(student)[j].state_dict(), layers_of(teacher)[source].state_dict()
        assert s_state.keys() == t_state.keys()
        for name in s_state:
            assert torch.equal(s_state[name], t_state[name]), name
    t_embed, s_embed = teacher.get_input_embeddings().weight, student.get_input_embeddings().weight
    assert torch.equal(s_embed, t_embed)
    assert num_layers(teacher) == 4  # the teacher's config is left alone


@pytest.mark.parametrize("family", sorted(TEACHERS))
def test_narrower_student_gets_the_asked_widths_under_each_familys_names(family):
    teacher = TEACHERS[family]()
    student = derive_student(
        teacher, derive(3, hidden_size=16, intermediate_size=48, num_attention_heads=4), seed=1
    )
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (3, 16, 4)
    if family == "gpt2":
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_inner) == (3, 16, 4, 48)
        fc = layers_of(student)[0].mlp.c_fc.weight  # Conv1D: (in, out)
        assert tuple(fc.shape) == (16, 48)
    else:
        assert cfg.intermediate_size == 48 and cfg.num_key_value_heads == 4
        assert tuple(layers_of(student)[0].mlp.gate_proj.weight.shape) == (48, 16)
    assert tuple(student.get_input_embeddings().weight.shape) == (VOCAB, 16)
    # A narrower student starts fresh: nothing of the teacher's is copied.
    assert not torch.equal(
        student.get_input_embeddings().weight[:, :16], teacher.get_input_embeddings().weight[:, :16]
    )


def test_more_layers_than_the_teacher_is_refused():
    with pytest.raises(ModelSetupError, match="exceeds the teacher's 4 layers"):
        derive_student(tiny_gpt2(4), derive(5), seed=1)


def test_a_family_without_an_mlp_width_setting_is_refused():
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=WIDTH, n_layer=2, n_head=2)
    teacher = transformers.BloomForCausalLM(config)
    with pytest.raises(ModelSetupError, match="derive.intermediate_size: a bloom config"):
        derive_student(teacher, derive(1, intermediate_size=48), seed=1)
