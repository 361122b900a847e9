"""Tiny random causal LMs of nine Hugging Face families, each with a tokenizer shaped like its family's
(its kind of BPE, its special tokens, its chat template), saved with `save_pretrained` so tests load
them through AutoModelForCausalLM/AutoTokenizer as a Hub download would be. No hub, no network.

    from tests.families import FAMILIES, save_family
    path = save_family("gemma2", tmp_path)  # a dir holding config.json, weights and tokenizer files
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BPE_VOCAB = 320  # byte-level needs its 256 byte symbols; a few dozen merges on top
WIDTH, HEADS, LAYERS, POSITIONS = 32, 2, 4, 128

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TokenizerShape:
    """A family's tokenizer: `kind` "bytelevel" (GPT-2 style) or "metaspace" (SentencePiece style,
    with `<unk>`); `specials` in vocabulary order (ids 0..); `bos_prefix` is the token the tokenizer
    puts before every text (None: none)."""

    kind: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None = None
    bos_prefix: str | None = None
    chat_template: str | None = None


@dataclass(frozen=True)
class Family:
    config_class: type
    tokenizer: TokenizerShape
    # Config arguments beyond the standard width/depth/vocab ones (each family's own names).
    config: dict = field(default_factory=dict)


_STD = {
    "hidden_size": WIDTH,
    "intermediate_size": 2 * WIDTH,
    "num_attention_heads": HEADS,
    "max_position_embeddings": POSITIONS,
}
_LLAMA_TOK = TokenizerShape(
    "metaspace", ("<unk>", "<s>", "</s>"), "<s>", "</s>", None, unk="<unk>", bos_prefix="<s>"
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        transformers.GPT2Config,
        TokenizerShape("bytelevel", ("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", None),
        {"n_embd": WIDTH, "n_head": HEADS, "n_inner": 2 * WIDTH, "n_positions": POSITIONS},
    ),
    "gpt_neox": Family(
        transformers.GPTNeoXConfig,
        TokenizerShape(
            "bytelevel", ("<|endoftext|>", "<|padding|>"), "<|endoftext|>", "<|endoftext|>", "<|padding|>"
        ),
        {**_STD, "rotary_pct": 0.25},
    ),
    "opt": Family(
        transformers.OPTConfig,
        # OPT: `</s>` is both bos and eos and starts every text; `<s>` is in the vocabulary unused.
        TokenizerShape(
            "bytelevel",
            ("<s>", "<pad>", "</s>", "<unk>"),
            "</s>",
            "</s>",
            "<pad>",
            unk="<unk>",
            bos_prefix="</s>",
        ),
        {
            "hidden_size": WIDTH,
            "ffn_dim": 2 * WIDTH,
            "num_attention_heads": HEADS,
            "word_embed_proj_dim": WIDTH,
            "max_position_embeddings": POSITIONS,
        },
    ),
    "llama": Family(transformers.LlamaConfig, _LLAMA_TOK, _STD),
    "llama_tied": Family(transformers.LlamaConfig, _LLAMA_TOK, {**_STD, "tie_word_embeddings": True}),
    "qwen2": Family(
        transformers.Qwen2Config,
        # Instruct shape: `<|im_end|>` ends a turn (eos), `<|endoftext|>` pads; no bos is added.
        TokenizerShape(
            "bytelevel",
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            None,
            "<|im_end|>",
            "<|endoftext|>",
            chat_template=CHATML,
        ),
        {**_STD, "num_attention_heads": 4, "num_key_value_heads": 2},  # GQA
    ),
    "qwen3": Family(
        transformers.Qwen3Config,
        TokenizerShape(
            "bytelevel",
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            None,
            "<|im_end|>",
            "<|endoftext|>",
            chat_template=CHATML,
        ),
        {**_STD, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": WIDTH // 4},
    ),
    "mistral": Family(
        transformers.MistralConfig,
        TokenizerShape(
            "metaspace",
            ("<unk>", "<s>", "</s>"),
            "<s>",
            "</s>",
            None,
            unk="<unk>",
            bos_prefix="<s>",
            chat_template=MISTRAL_CHAT,
        ),
        {**_STD, "num_key_value_heads": 1, "sliding_window": 64},
    ),
    "phi3": Family(
        transformers.Phi3Config,
        TokenizerShape(
            "metaspace",
            ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"),
            "<s>",
            "<|endoftext|>",
            "<|endoftext|>",
            unk="<unk>",
            chat_template=PHI3_CHAT,
        ),
        _STD,
    ),
    "gemma2": Family(
        transformers.Gemma2Config,
        TokenizerShape(
            "metaspace",
            ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
            "<bos>",
            "<eos>",
            "<pad>",
            unk="<unk>",
            bos_prefix="<bos>",
            chat_template=GEMMA_CHAT,
        ),
        {
            **_STD,
            "num_key_value_heads": 1,
            "head_dim": WIDTH // HEADS,
            "query_pre_attn_scalar": WIDTH // HEADS,
            "sliding_window": 16,
        },
    ),
}


def _corpus() -> list[str]:
    """A little stdlib text: docstrings and code of a few modules (always present, no download)."""
    return [inspect.getsource(module) for module in (json, functools, inspect)]


@functools.cache
def _trained(shape: TokenizerShape) -> str:
    """The trained tokenizer's JSON (cached: one BPE training per shape and session)."""
    if shape.kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token=shape.unk))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=list(shape.specials),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if shape.bos_prefix is not None:
        prefix = shape.bos_prefix
        tok.post_processor = processors.TemplateProcessing(
            single=f"{prefix} $A",
            pair=f"{prefix} $A {prefix} $B",
            special_tokens=[(prefix, tok.token_to_id(prefix))],
        )
    elif shape.kind == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def build_tokenizer(name: str) -> transformers.PreTrainedTokenizerFast:
    shape = FAMILIES[name].tokenizer
    named = {"bos_token": shape.bos, "eos_token": shape.eos, "pad_token": shape.pad, "unk_token": shape.unk}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained(shape)),
        **{k: v for k, v in named.items() if v is not None},
    )
    if shape.chat_template is not None:
        tokenizer.chat_template = shape.chat_template
    return tokenizer


# Family config entries that scale with the model width (each family's own names): the residual
# width, the MLP width and the per-head width; head counts stay, so a narrower model has narrower heads.
_WIDTH_KEYS = (
    "hidden_size",
    "n_embd",
    "word_embed_proj_dim",
    "intermediate_size",
    "n_inner",
    "ffn_dim",
    "head_dim",
    "query_pre_attn_scalar",
)


def build_config(name: str, tokenizer, layers: int = LAYERS, vocab_pad: int = 0, width: int = WIDTH):
    """The family's config: `layers` deep, `width` wide (every width entry scaled by width / WIDTH),
    vocabulary len(tokenizer) + `vocab_pad`, the tokenizer's special ids. `tokenizer` may be another
    family's (a student built for a teacher's tokenizer)."""
    family = FAMILIES[name]
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    shape = {k: v * width // WIDTH if k in _WIDTH_KEYS else v for k, v in family.config.items()}
    return family.config_class(
        vocab_size=len(tokenizer) + vocab_pad, num_hidden_layers=layers, **ids, **shape
    )


def build_family(
    name: str,
    layers: int = LAYERS,
    vocab_pad: int = 0,
    seed: int = 0,
    width: int = WIDTH,
    tokenizer_of: str | None = None,
):
    """(model, tokenizer): a freshly initialised fp32 model of family `name`, with the tokenizer of
    family `tokenizer_of` (default: its own)."""
    tokenizer = build_tokenizer(tokenizer_of or name)
    config = build_config(name, tokenizer, layers, vocab_pad, width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tokenizer


def save_family(
    name: str,
    tmp_dir,
    vocab_pad: int = 0,
    layers: int = LAYERS,
    seed: int = 0,
    width: int = WIDTH,
    tokenizer_of: str | None = None,
    subdir: str | None = None,
) -> Path:
    """Save family `name`'s tiny model and tokenizer (`tokenizer_of`'s, default its own; see
    `build_family`) to `tmp_dir/subdir` (default `tmp_dir/name`) and return that directory."""
    model, tokenizer = build_family(name, layers, vocab_pad, seed, width, tokenizer_of)
    path = Path(tmp_dir) / (subdir or name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
