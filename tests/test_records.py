"""Records -> ids + loss mask (orchestrator/data/records.py, chat.py): the assistant-only mask token by
token with family tokenizers (their own chat templates), prompt/completion pairs joined as TRL does,
truncation counts, bad input as one-line errors, and the ChatML BPE trained for chat data. No Ray."""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.records import Encoder, record_kind, record_text, resolve_loss_on
from orchestrator.errors import ConfigError, DataError
from tests.families import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello, friend."},
    {"role": "user", "content": "More?"},
    {"role": "assistant", "content": "No."},
]


def encode(tokenizer, records, kind="chat", loss_on="auto", seq_len=512):
    encoder = Encoder(tokenizer, kind, "text", loss_on, seq_len)
    return encoder.encode(records, [f"data/chat.jsonl:{i + 1}" for i in range(len(records))])


def pieces(tokenizer, *text):
    return [i for piece in text for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]


def trained_runs(tokenizer, ids, mask) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    runs, position = [], 0
    for trained, group in groupby(mask.tolist()):
        length = len(list(group))
        if trained:
            runs.append(tokenizer.decode(ids[position : position + length].tolist()))
        position += length
    return runs


def data_error(call) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# Chat: assistant-only masks


def test_chatml_assistant_mask_token_by_token():
    tok = build_tokenizer("qwen2")  # ChatML: <|im_start|>role\n ... <|im_end|>\n
    result = encode(tok, [{"messages": CONVERSATION}])
    ids, mask = result.ids[0], result.loss_mask[0]
    assert ids.dtype == np.int32 and mask.dtype == np.int8
    # The conversation built by hand, piece by piece: (text, trained?)
    expected = [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n", 0),
        ("<|im_start|>assistant\n", 0),  # the header is prompt, not target
        ("Hello, friend.<|im_end|>", 1),  # content and end-of-turn token are trained
        ("\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("No.<|im_end|>", 1),
        ("\n", 0),  # what the template puts after the end-of-turn token is not
    ]
    want_ids = [i for text, _ in expected for i in pieces(tok, text)]
    want_mask = [trained for text, trained in expected for _ in pieces(tok, text)]
    assert ids.tolist() == want_ids
    assert mask.tolist() == want_mask
    im_end, im_start = tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert ids[mask == 1].tolist() == pieces(tok, "Hello, friend.") + [im_end] + pieces(tok, "No.") + [im_end]
    assert im_start not in ids[mask == 1].tolist()
    assert (result.truncated, result.without_target) == (0, 0)


@pytest.mark.parametrize(
    "family, ends",
    [("gemma2", "<end_of_turn>"), ("mistral", "</s>")],  # "model" turns; [INST] ... [/INST] with eos
)
def test_other_templates_train_exactly_the_assistant_turns(family, ends):
    tok = build_tokenizer(family)
    messages = CONVERSATION[1:]  # neither template takes a system message
    result = encode(tok, [{"messages": messages}])
    ids, mask = result.ids[0], result.loss_mask[0]
    assert (
        ids.tolist()
        == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    )
    assert trained_runs(tok, ids, mask) == [f"Hello, friend.{ends}", f"No.{ends}"]
    end_id = tok.convert_tokens_to_ids(ends)
    assert [int(i) for i in ids[mask == 1] if i == end_id] == [end_id, end_id]


def test_loss_on_all_trains_every_token():
    tok = build_tokenizer("qwen2")
    assistant = encode(tok, [{"messages": CONVERSATION}])
    everything = encode(tok, [{"messages": CONVERSATION}], loss_on="all")
    assert everything.ids[0].tolist() == assistant.ids[0].tolist()
    assert everything.loss_mask[0].tolist() == [1] * len(assistant.ids[0])


def test_generation_markers_are_used_when_the_template_has_them():
    tok = build_tokenizer("qwen2")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}<|im_end|>\n{% else %}{{ m['content'] }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    result = encode(tok, [{"messages": CONVERSATION}])
    # The template's author left <|im_end|> outside the marked block: it is not trained.
    assert trained_runs(tok, result.ids[0], result.loss_mask[0]) == ["Hello, friend.", "No."]


def test_truncated_at_seq_len_and_counted_never_split():
    tok = build_tokenizer("qwen2")
    short = {"messages": CONVERSATION[1:3]}
    full = encode(tok, [{"messages": CONVERSATION}, short])
    seq_len = len(full.ids[0]) - 3
    cut = encode(tok, [{"messages": CONVERSATION}, short], seq_len=seq_len)
    assert cut.truncated == 1 and len(cut.ids) == 2  # no second sample from the rest
    assert cut.ids[0].tolist() == full.ids[0][:seq_len].tolist()
    assert cut.loss_mask[0].tolist() == full.loss_mask[0][:seq_len].tolist()
    assert cut.ids[1].tolist() == full.ids[1].tolist()
    # Cut before the first answer: no trained token left, counted.
    first_answer = int(np.argmax(full.loss_mask[0]))
    early = encode(tok, [{"messages": CONVERSATION}], seq_len=first_answer)
    assert (early.truncated, early.without_target) == (1, 1)


def test_a_conversation_without_assistant_turn_is_counted_not_refused():
    tok = build_tokenizer("qwen2")
    result = encode(tok, [{"messages": CONVERSATION[:2]}, {"messages": CONVERSATION}])
    assert result.without_target == 1
    assert not result.loss_mask[0].any() and result.loss_mask[1].any()


# ---------------------------------------------------------------------------------------------
# Prompt / completion pairs


def test_pair_mask_is_the_tokens_past_the_prompt_plus_eos():
    tok = build_tokenizer("qwen2")
    prompt, completion = "Q: what does json.dumps do?\nA:", " It serialises an object to JSON."
    result = encode(tok, [{"prompt": prompt, "completion": completion}], kind="pair")
    ids, mask = result.ids[0].tolist(), result.loss_mask[0].tolist()
    n_prompt = len(tok(prompt)["input_ids"])
    assert ids == tok(prompt + completion)["input_ids"] + [tok.eos_token_id]
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    assert tok.decode(result.ids[0][result.loss_mask[0] == 1].tolist()).endswith("JSON.<|im_end|>")
    everything = encode(tok, [{"prompt": prompt, "completion": completion}], kind="pair", loss_on="all")
    assert everything.loss_mask[0].tolist() == [1] * len(ids)


def test_pair_with_a_bos_tokenizer_keeps_bos_in_the_prompt():
    tok = build_tokenizer("llama")  # its tokenizer puts <s> before every text, as TRL's tokenize does
    result = encode(tok, [{"prompt": "Say hi.", "completion": " Hi."}], kind="pair")
    ids, mask = result.ids[0].tolist(), result.loss_mask[0].tolist()
    assert ids[0] == tok.bos_token_id and mask[0] == 0
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1
    assert (
        tok.decode(result.ids[0][result.loss_mask[0] == 1].tolist(), skip_special_tokens=True).strip()
        == "Hi."
    )


def test_conversational_pair_trains_the_completion_messages():
    tok = build_tokenizer("qwen2")
    record = {"prompt": CONVERSATION[:2], "completion": [{"role": "assistant", "content": "Hello."}]}
    result = encode(tok, [record], kind="pair")
    assert trained_runs(tok, result.ids[0], result.loss_mask[0]) == ["Hello.<|im_end|>"]


# ---------------------------------------------------------------------------------------------
# Kinds, loss_on and bad input: one line each


def test_record_kind_and_loss_on():
    assert record_kind(["messages"], "text") == "chat"
    assert record_kind(["prompt", "completion", "id"], "text") == "pair"
    assert record_kind(["body"], "body") == "text"
    message = data_error(lambda: record_kind(["title", "id"], "text", where="a.jsonl:1"))
    assert message == (
        "a.jsonl:1: no field 'text' (data.text_field), 'messages' or 'prompt'+'completion'; "
        "fields present: 'title', 'id'"
    )
    assert [resolve_loss_on("auto", k) for k in ("text", "chat", "pair")] == [
        "all",
        "assistant",
        "completion",
    ]
    with pytest.raises(ConfigError, match=r"data.loss_on: 'assistant' does not apply to text records"):
        resolve_loss_on("assistant", "text")
    with pytest.raises(ConfigError, match=r"data.loss_on: 'completion' does not apply to chat records"):
        resolve_loss_on("completion", "chat")
    with pytest.raises(ConfigError, match=r"data.loss_on: 'prompt' is not one of"):
        resolve_loss_on("prompt", "chat")


def test_unknown_role_names_the_file_line_and_entry():
    tok = build_tokenizer("qwen2")
    bad = [CONVERSATION[1], {"role": "robot", "content": "beep"}]
    message = data_error(lambda: encode(tok, [{"messages": CONVERSATION}, {"messages": bad}]))
    assert (
        message == "data/chat.jsonl:2: messages[1] has role 'robot'; allowed: system, user, assistant, tool"
    )


def test_entry_without_content_names_the_file_line_and_entry():
    tok = build_tokenizer("qwen2")
    bad = [CONVERSATION[1], {"role": "assistant"}]
    message = data_error(lambda: encode(tok, [{"messages": bad}]))
    assert message == "data/chat.jsonl:1: messages[1] (assistant) has no 'content'; expected a string"
    message = data_error(lambda: encode(tok, [{"messages": []}]))
    assert message.startswith("data/chat.jsonl:1: 'messages' is empty")


def test_chat_with_a_tokenizer_without_template_is_refused_before_any_record():
    tok = build_tokenizer("llama")
    tok.name_or_path = "models/base-llama"
    message = data_error(lambda: Encoder(tok, "chat", "text", "auto", 64))
    assert "tokenizer 'models/base-llama' has no chat template" in message
    assert "set data.tokenizer to one that has one" in message


def test_a_template_that_rewrites_earlier_turns_is_refused_for_assistant_masks():
    tok = build_tokenizer("qwen2")
    # Numbers turns from the end: adding a turn changes the text of every earlier one.
    tok.chat_template = (
        "{% for m in messages %}[{{ messages|length - loop.index }}] {{ m['content'] }}\n{% endfor %}"
    )
    message = data_error(lambda: encode(tok, [{"messages": CONVERSATION}]))
    assert message.startswith("data/chat.jsonl:1: the chat template of tokenizer")
    assert "use data.loss_on: all" in message
    assert encode(tok, [{"messages": CONVERSATION}], loss_on="all").loss_mask[0].all()


def test_bad_text_and_pair_records():
    tok = build_tokenizer("qwen2")
    message = data_error(lambda: encode(tok, [{"text": "ok"}, {"body": "x"}], kind="text"))
    assert message == "data/chat.jsonl:2: no field 'text' (data.text_field); fields present: 'body'"
    message = data_error(lambda: encode(tok, [{"prompt": "a", "completion": ["b"]}], kind="pair"))
    assert message.startswith("data/chat.jsonl:1: 'prompt' is a str and 'completion' a list")


def test_text_records_are_ids_plus_eos_untruncated():
    tok = build_tokenizer("qwen2")
    text = "def f(x):\n    return x  # <|im_end|> stays text\n" * 4
    result = encode(tok, [{"text": text}], kind="text", seq_len=8)
    assert result.loss_mask is None and result.truncated == 0
    assert result.ids[0].tolist() == tok(text, split_special_tokens=True)["input_ids"] + [tok.eos_token_id]


def test_record_text_is_what_a_bpe_trains_on():
    assert record_text({"messages": CONVERSATION[:2]}, "chat", "text") == "Be brief.\nHi there"
    assert record_text({"prompt": "a", "completion": "b"}, "pair", "text") == "ab"
    assert record_text({"body": "x"}, "text", "body") == "x"


# ---------------------------------------------------------------------------------------------
# The BPE trained for chat data, and the shipped chat file


def test_chatml_bpe_renders_and_masks_a_conversation(tmp_path):
    from orchestrator.data.tokenizer_training import (
        load_pretrained,
        save_trained,
        tokenizer_hash,
        train_bpe,
        train_chat_bpe,
    )

    texts = [record_text({"messages": CONVERSATION}, "chat", "text")] * 8
    save_trained(train_chat_bpe(texts, vocab_size=300), tmp_path / "chat")
    tok = load_pretrained(tmp_path / "chat")
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [3, 4]
    assert tok.eos_token == "<|im_end|>" and len(tok) <= 300
    result = encode(tok, [{"messages": CONVERSATION}])
    assert trained_runs(tok, result.ids[0], result.loss_mask[0]) == [
        "Hello, friend.<|im_end|>",
        "No.<|im_end|>",
    ]
    assert 3 not in result.ids[0][result.loss_mask[0] == 1].tolist()
    # Its identity survives a save_pretrained round trip (the manifest's hash is reproducible).
    tok.save_pretrained(tmp_path / "again")
    assert tokenizer_hash(load_pretrained(tmp_path / "again")) == tokenizer_hash(tok)
    # The text BPE is unchanged: no ChatML tokens, no template, <|eos|> is eos.
    save_trained(train_bpe(texts, vocab_size=300), tmp_path / "text")
    plain = load_pretrained(tmp_path / "text")
    assert plain.eos_token == "<|eos|>" and plain.chat_template is None
    assert plain.convert_tokens_to_ids("<|im_start|>") in (None, plain.unk_token_id)


def test_shipped_chat_file_is_small_and_encodes():
    path = ROOT / "data" / "stdlib_chat.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 300 <= len(lines) <= 600 and path.stat().st_size < 1_000_000
    records = [json.loads(line) for line in lines]
    roles = [m["role"] for r in records for m in r["messages"]]
    assert {"system", "user", "assistant"} <= set(roles)
    assert sum(len(r["messages"]) > 3 for r in records) >= 50  # some multi-turn
    result = encode(build_tokenizer("qwen2"), records, seq_len=4096)
    assert result.without_target == 0 and result.truncated == 0


def test_chat_data_script_is_deterministic(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_chat_data", ROOT / "scripts" / "make_chat_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "a.jsonl"), "--count", "50"]) == 0
    assert script.main(["--out", str(tmp_path / "b.jsonl"), "--count", "50"]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 50
