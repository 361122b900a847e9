"""Run under transformers 4.x (tests/transformers4_env.py): load each exported directory as a user of
4.x would and print, as one JSON object per directory, what the export tests compare with 5.x.

Usage: transformers4_load.py REQUEST.json, where REQUEST is a list of {"dir", "text", "prompt_ids",
"max_new_tokens"}; prints a JSON list of results."""

from __future__ import annotations

import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig


def probe(request: dict) -> dict:
    model_dir = request["dir"]
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    generation = GenerationConfig.from_pretrained(model_dir)
    prompt = torch.tensor([request["prompt_ids"]])  # (1, T)
    with torch.no_grad():
        logits = model(prompt).logits[0]  # (T, V)
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=request["max_new_tokens"],
            do_sample=False,
        )
    return {
        "version": transformers.__version__,
        "tokenizer_class": type(tokenizer).__name__,
        "ids": tokenizer(request["text"])["input_ids"],
        "special": {
            name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")
        },
        "config_special": {
            name: getattr(config, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")
        },
        "generation_special": {
            name: getattr(generation, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")
        },
        "rope_theta": getattr(config, "rope_theta", None),
        "chat_template": tokenizer.chat_template,
        "all_special_tokens": tokenizer.all_special_tokens,
        "logits": logits.tolist(),
        "generated": out[0, prompt.shape[1] :].tolist(),
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        requests = json.load(f)
    print(json.dumps([probe(request) for request in requests]))
