"""The models' classes checked on the driver before Ray starts (orchestrator/train/model_checks.py):
an attention kernel the model's class lacks, a family `student: derived` cannot build, a derived
depth past the teacher's. Each is one line naming the key and the model, exit 2, no run dir."""

from __future__ import annotations

import pytest
import transformers
from families import save_family
from test_bad_input import no_ray_start, refused  # noqa: F401  (no_ray_start: autouse fixture)

from orchestrator.train.model_checks import model_config_of
from workers.models import ModelSetupError, check_derivable, derived_config


def test_attention_kernel_the_model_lacks_is_refused_naming_key_and_model(tmp_path, capsys):
    teacher = save_family("gemma2", tmp_path)  # Gemma 2 soft-caps attention logits: no sdpa path
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", "train.attn_implementation=sdpa")
    assert line == (
        "raydistill: error: train.attn_implementation='sdpa': Gemma2ForCausalLM does not support it "
        f"(supports flash_attention_2, eager); use 'auto' (teacher '{teacher}')"
    )
    assert not (tmp_path / "run").exists()


def test_a_family_derived_cannot_build_is_refused_naming_the_model_type(tmp_path, capsys):
    # OpenAI GPT lists no decoder layer class transformers' structures expose (no _no_split_modules).
    teacher = tmp_path / "openai-gpt"
    config = transformers.OpenAIGPTConfig(vocab_size=512, n_positions=64, n_embd=32, n_layer=4, n_head=2)
    transformers.OpenAIGPTLMHeadModel(config).save_pretrained(teacher)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", "student=derived")
    assert line.startswith(f"raydistill: error: student=derived from teacher '{teacher}': "), line
    assert "openai-gpt" in line and "give a student model instead" in line
    assert not (tmp_path / "run").exists()


def test_derived_depth_past_the_teachers_is_refused(tmp_path, capsys):
    teacher = save_family("opt", tmp_path, layers=2)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", "student=derived", "derive.num_layers=3")
    assert line == (
        f"raydistill: error: student=derived from teacher '{teacher}': derive.num_layers=3 exceeds the "
        "teacher's 2 layers"
    )


@pytest.mark.parametrize(
    "family", ["gpt2", "gpt_neox", "opt", "llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2"]
)
def test_every_tested_family_is_derivable_on_the_meta_device(tmp_path, family):
    check_derivable(model_config_of(str(save_family(family, tmp_path))), {"num_layers": 2})


def test_qwen_full_attention_layers_stay_a_prefix_of_the_derived_stack():
    # 8 teacher layers, the first 4 full attention; a 4-layer student copies teacher layers 2, 4, 6, 8.
    teacher = transformers.Qwen2Config(
        num_hidden_layers=8, use_sliding_window=True, sliding_window=16, max_window_layers=4
    )
    student = derived_config(teacher, {"num_layers": 4})
    assert student.max_window_layers == 2
    assert student.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2


def test_derive_errors_are_model_setup_errors_not_transformers_exceptions():
    with pytest.raises(ModelSetupError, match="derive.num_layers=5 exceeds the teacher's 4 layers"):
        check_derivable(transformers.LlamaConfig(num_hidden_layers=4), {"num_layers": 5})
