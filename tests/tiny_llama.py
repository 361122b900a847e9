"""The tiny Llama the unit tests build from a config (no hub): 2 heads, MLP twice the width, special
ids 0/1/2 set so transformers does not warn about ids outside a small vocabulary; and `ce_module`,
which wraps a model in the CE-only loss as a pre-training run (`teacher: none`) does."""

from __future__ import annotations

import torch
import transformers


def tiny_llama(layers: int, width: int, vocab: int, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return transformers.LlamaForCausalLM(config)


CE_ONLY = {
    "alpha_ce": 1.0,
    "alpha_kd": 0.0,
    "alpha_feature": 0.0,
    "alpha_attention": 0.0,
    "kd_temperature": 2.0,
    "kd_kind": "forward_kl",
    "jsd_beta": 0.5,
    "feature_norm": "layernorm",
    "layer_map": "auto",
}


def ce_module(model: transformers.PreTrainedModel, attn_implementation: str = "eager"):
    """`model` inside the module handed to DeepSpeed, with only CE on (no teacher, no curriculum)."""
    from workers.distill_loss import DistillationLoss
    from workers.loss_config import CurriculumConfig, LossConfig
    from workers.models import hidden_size, num_layers
    from workers.student_module import StudentWithLoss

    width, layers = hidden_size(model), num_layers(model)
    loss = DistillationLoss(
        LossConfig(**CE_ONLY),
        CurriculumConfig(enabled=False, phase1_end=0.0, phase2_end=0.0),
        student_hidden_size=width,
        teacher_hidden_size=width,
        student_num_layers=layers,
        teacher_num_layers=layers,
    )
    return StudentWithLoss(model, loss, attn_implementation)
