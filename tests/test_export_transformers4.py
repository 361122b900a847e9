"""The exported student loads, tokenises identically and generates with transformers 5 (the project's)
and transformers 4.x (a cached side install, tests/transformers4_env.py), for every family of
tests/families.py (Llama with a non-default RoPE base, which 4.x would silently drop), each exported
through `export_student` from a single-process DeepSpeed engine. The special ids in config.json,
generation_config.json and the tokenizer are the tokenizer's, and `generate` stops at eos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from families import build_config, build_tokenizer
from test_engine import engine_config
from tiny_llama import ce_module
from transformers4_env import RegistryUnreachable, run_with_transformers4
from transformers4_load import probe

from workers.engine import build_engine
from workers.export import export_student
from workers.hf_compat import config_for_transformers4
from workers.tokenizer_identity import with_pad_fallback

HERE = Path(__file__).parent
FAMILIES = ["gpt2", "gpt_neox", "opt", "llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2"]
ROPE_THETA = 500000.0  # Llama 3's base: 4.x silently used 10000 when only `rope_parameters` carried it
VOCAB_PAD = 16  # embeddings padded past the tokenizer's ids, as real checkpoints are
MAX_NEW_TOKENS = 6
SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id")
TEXT = "def add(a, b):\n    return a + b\n"
CHAT = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi"}]


def tiny_tokenizer(family: str):
    """The family's tokenizer as a run uses it (pad = eos where the family has no pad)."""
    return with_pad_fallback(build_tokenizer(family))


def sample_text(tokenizer) -> str:
    """A chat rendered with the family's template where it has one (its special tokens included)."""
    if tokenizer.chat_template is None:
        return TEXT
    return tokenizer.apply_chat_template(CHAT, tokenize=False)


def tiny_student(family: str, tokenizer, prompt_ids: list[int]) -> transformers.PreTrainedModel:
    """A tiny random model of `family` whose greedy first token after `prompt_ids` is eos (its untied
    lm_head rows for eos and the token it would have picked are swapped), so `generate` must stop
    after one token. The config's special ids are deliberately not the tokenizer's: export sets them."""
    config = build_config(family, tokenizer, layers=2, vocab_pad=VOCAB_PAD)
    wrong_id = len(tokenizer) + 1  # a padding row: no tokenizer's special id
    config.tie_word_embeddings = False
    for name in SPECIAL:
        setattr(config, name, wrong_id)
    if family == "llama":
        config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    eos_id = tokenizer.eos_token_id
    with torch.no_grad():
        first = int(model(torch.tensor([prompt_ids])).logits[0, -1].argmax())
        rows = model.get_output_embeddings().weight
        rows[[first, eos_id]] = rows[[eos_id, first]]
    return model


def export_family(family: str, out_dir: Path) -> dict:
    """Export the family's student through a ZeRO-0 engine; returns the request the probes read."""
    tokenizer = tiny_tokenizer(family)
    text = sample_text(tokenizer)
    prompt_ids = tokenizer(text)["input_ids"]
    model = tiny_student(family, tokenizer, prompt_ids)
    engine = build_engine(ce_module(model), engine_config(0), 1)
    export_student(engine, tokenizer, out_dir, rank=0, zero_stage=0)
    return {"dir": str(out_dir), "text": text, "prompt_ids": prompt_ids, "max_new_tokens": MAX_NEW_TOKENS}


@pytest.fixture(scope="module")
def exported(single_process_group, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {family: export_family(family, root / family / "student") for family in FAMILIES}


@pytest.fixture(scope="module")
def under_transformers5(exported):
    return {family: probe(request) for family, request in exported.items()}


@pytest.fixture(scope="module")
def under_transformers4(exported, tmp_path_factory):
    request_file = tmp_path_factory.mktemp("t4") / "request.json"
    request_file.write_text(json.dumps([exported[family] for family in FAMILIES]))
    try:
        result = run_with_transformers4(HERE / "transformers4_load.py", str(request_file))
    except RegistryUnreachable as error:
        pytest.skip(f"no transformers 4.x to test with: {error}")
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(FAMILIES, json.loads(result.stdout.strip().splitlines()[-1]), strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_carries_the_tokenizers_special_ids_and_generate_stops_at_eos(
    family, exported, under_transformers5
):
    tokenizer = tiny_tokenizer(family)
    expected = {name: getattr(tokenizer, name) for name in SPECIAL}
    out = Path(exported[family]["dir"])
    config, generation = (
        json.loads((out / name).read_text()) for name in ("config.json", "generation_config.json")
    )
    assert {name: config[name] for name in SPECIAL} == expected
    assert {name: generation.get(name) for name in SPECIAL} == expected
    seen = under_transformers5[family]
    assert seen["version"].startswith("5.")
    assert seen["special"] == seen["config_special"] == seen["generation_special"] == expected
    assert seen["ids"] == exported[family]["prompt_ids"] == tokenizer(exported[family]["text"])["input_ids"]
    assert seen["chat_template"] == tokenizer.chat_template
    assert seen["generated"] == [tokenizer.eos_token_id]  # one token, then stopped: not MAX_NEW_TOKENS


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers4_loads_tokenises_and_generates_as_transformers5(
    family, under_transformers4, under_transformers5
):
    old, new = under_transformers4[family], under_transformers5[family]
    assert old["version"].startswith("4."), old["version"]
    assert old["tokenizer_class"] == "PreTrainedTokenizerFast"
    for key in ("ids", "special", "config_special", "generation_special", "chat_template", "generated"):
        assert old[key] == new[key], key
    assert sorted(old["all_special_tokens"]) == sorted(new["all_special_tokens"])
    if family == "llama":
        assert old["rope_theta"] == ROPE_THETA
    torch.testing.assert_close(torch.tensor(old["logits"]), torch.tensor(new["logits"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": ROPE_THETA},
        {
            "rope_type": "llama3",
            "rope_theta": ROPE_THETA,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 4096},
    ],
    ids=lambda rope: rope["rope_type"],
)
def test_the_4x_rope_keys_read_back_in_transformers5_as_the_same_rope_parameters(rope, tmp_path):
    config = transformers.LlamaConfig(num_attention_heads=2, hidden_size=32, rope_parameters=dict(rope))
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    patched = config_for_transformers4(saved)
    assert patched["rope_theta"] == rope["rope_theta"]
    if rope["rope_type"] == "default":
        assert "rope_scaling" not in patched
    else:  # 4.x reads the scaling from `rope_scaling` and the base from `rope_theta`
        assert patched["rope_scaling"] == {
            k: v for k, v in saved["rope_parameters"].items() if k != "rope_theta"
        }
    (tmp_path / "config.json").write_text(json.dumps(patched))
    assert transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters == saved["rope_parameters"]


def test_gpt_neox_gets_4x_names_for_its_rope_base_and_rotary_fraction():
    config = transformers.GPTNeoXConfig(rope_parameters={"rope_theta": 20000.0, "partial_rotary_factor": 0.5})
    patched = config_for_transformers4(config.to_dict())
    assert (patched["rotary_emb_base"], patched["rotary_pct"]) == (20000.0, 0.5)
    assert transformers.GPTNeoXConfig.from_dict(patched).rope_parameters == config.rope_parameters
