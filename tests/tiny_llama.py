"""The tiny Llama the unit tests build from a config (no hub): 2 heads, MLP twice the width, special
ids 0/1/2 set so transformers does not warn about ids outside a small vocabulary."""

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
