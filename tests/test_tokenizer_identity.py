"""Tokenizer identity (workers/tokenizer_identity.py) and the data-vs-models rules built on it
(orchestrator/train/data_models.py, the data cache in orchestrator/data/prepare.py).

Tokenizers are built here with the `tokenizers` library and wrapped in PreTrainedTokenizerFast; models
are configs alone (`LlamaConfig.save_pretrained`), which is all the driver reads. No hub, no Ray.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from orchestrator.config import DataConfig, load_config
from orchestrator.data.prepare import ensure_prepared, read_manifest
from orchestrator.data.shards import read_split
from orchestrator.errors import ConfigError
from orchestrator.train import data_models
from orchestrator.train.data_models import (
    check_data_fits_models,
    default_tokenizer,
    has_tokenizer,
    run_tokenizer_spec,
)
from workers.data import to_batch
from workers.losses import ce_loss, ce_targets
from workers.models import load_tokenizer
from workers.tokenizer_identity import identity_fields, pad_fallback_note, tokenizer_identity

TEXTS = ["def main():\n    return 0\n", "class A:\n    pass\n", "x = [i * 2 for i in range(10)]\n"] * 4
# Qwen2.5-shaped: one tokenizer.json, base and Instruct differ in eos and chat template.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def backend(specials=(ENDOFTEXT, IM_START, IM_END), vocab_size=300) -> Tokenizer:
    """A byte-level BPE trained on TEXTS: the special tokens take ids 0, 1, 2..."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    return tokenizer


def fast(tok: Tokenizer | None = None, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok or backend(), **special)


def qwen_base() -> PreTrainedTokenizerFast:
    return fast(eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)


def qwen_instruct() -> PreTrainedTokenizerFast:
    return fast(eos_token=IM_END, pad_token=ENDOFTEXT, chat_template=CHAT)


def save_model(path: Path, tokenizer=None, vocab=512, **ids) -> Path:
    """A model directory as the driver sees it: config.json (and the tokenizer, when given)."""
    LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, **ids).save_pretrained(path)  # fmt: skip
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for index in range(30):
        (root / f"doc{index}.txt").write_text(TEXTS[index % 3] * (1 + index % 5))
    return root


def data_cfg(corpus: Path, cache: Path, **changes) -> DataConfig:
    cfg = DataConfig(source=str(corpus), seq_len=16, eval_fraction=0.2, cache_dir=str(cache), vocab_size=300)
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------
# The identity itself.


def test_identity_survives_save_and_load(tmp_path):
    for index, tokenizer in enumerate((qwen_base(), qwen_instruct())):
        tokenizer.save_pretrained(tmp_path / str(index))
        loaded = AutoTokenizer.from_pretrained(tmp_path / str(index))
        assert identity_fields(loaded) == identity_fields(tokenizer)
        assert tokenizer_identity(loaded) == tokenizer_identity(tokenizer)
        # A second round trip (an exported student's tokenizer) keeps it too.
        loaded.save_pretrained(tmp_path / f"{index}-again")
        again = AutoTokenizer.from_pretrained(tmp_path / f"{index}-again")
        assert tokenizer_identity(again) == tokenizer_identity(tokenizer)


def test_base_and_instruct_share_tokenizer_json_but_not_identity():
    base, instruct = qwen_base(), qwen_instruct()
    assert base.backend_tokenizer.to_str() == instruct.backend_tokenizer.to_str()  # the old cache key
    assert tokenizer_identity(base) != tokenizer_identity(instruct)
    assert base.eos_token_id != instruct.eos_token_id


@pytest.mark.parametrize(
    "change",
    [
        "chat_template",
        "eos",
        "bos",
        "unk",
        "additional",
        "normalizer",
        "vocabulary",
        "clean_up",
    ],
)
def test_each_part_changes_the_identity(change):
    from tokenizers import normalizers

    reference = fast(eos_token=ENDOFTEXT)
    if change == "chat_template":
        other = fast(eos_token=ENDOFTEXT, chat_template=CHAT)
    elif change == "eos":
        other = fast(eos_token=IM_END)
    elif change == "bos":
        other = fast(eos_token=ENDOFTEXT, bos_token=IM_START)
    elif change == "unk":
        other = fast(eos_token=ENDOFTEXT, unk_token=IM_START)
    elif change == "additional":
        other = fast(eos_token=ENDOFTEXT, additional_special_tokens=[IM_START])
    elif change == "normalizer":
        tok = backend()
        tok.normalizer = normalizers.Lowercase()
        other = fast(tok, eos_token=ENDOFTEXT)
    elif change == "vocabulary":
        other = fast(backend(vocab_size=270), eos_token=ENDOFTEXT)  # fewer merges
    else:
        other = fast(eos_token=ENDOFTEXT, clean_up_tokenization_spaces=True)
    assert tokenizer_identity(other) != tokenizer_identity(reference), change


def test_padding_side_and_max_length_do_not_change_the_identity():
    reference = fast(eos_token=ENDOFTEXT)
    other = fast(eos_token=ENDOFTEXT, padding_side="left", model_max_length=77)
    assert tokenizer_identity(other) == tokenizer_identity(reference)


def test_pad_fallback_is_part_of_the_identity_and_announced(tmp_path):
    """No pad counts as pad = eos: a student exported with the fallback keeps the identity."""
    no_pad = fast(eos_token=ENDOFTEXT)
    no_pad.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))  # what workers train and export with
    assert loaded.pad_token_id == loaded.eos_token_id
    assert tokenizer_identity(loaded) == tokenizer_identity(no_pad)
    note = pad_fallback_note(no_pad, "gpt2-like")
    assert note is not None and "no pad token" in note and ENDOFTEXT in note and "\n" not in note
    assert pad_fallback_note(loaded, "x") is None
    # A real pad token other than eos is another tokenizer.
    assert tokenizer_identity(fast(eos_token=ENDOFTEXT, pad_token=IM_START)) != tokenizer_identity(no_pad)


def test_eos_inside_a_sequence_keeps_its_label_when_pad_is_eos():
    """Labels are masked by attention mask/position (none for packed rows), never by pad id: with
    pad == eos the document separators are still predicted."""
    tokenizer = fast(eos_token=ENDOFTEXT)
    tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[5, 6, eos, 7, 8, eos, 9, 10]])  # (1, 8): two documents packed
    batch = to_batch(ids.numpy())
    assert torch.equal(batch["labels"], ids) and bool(batch["attention_mask"].all())
    logits = torch.randn(1, 8, 300, dtype=torch.float64)
    every = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])  # eos targets included
    assert torch.allclose(ce_loss(logits, batch["labels"]), every)
    without_eos = ids[0, 1:] != eos
    dropped = torch.nn.functional.cross_entropy(logits[0, :-1][without_eos], ids[0, 1:][without_eos])
    assert not torch.allclose(ce_loss(logits, batch["labels"]), dropped)


def test_eos_of_a_tokenizer_without_pad_is_a_real_label_that_ce_trains_on(tmp_path):
    """The workers' own path: `load_tokenizer` sets pad = eos; the packed row's labels (`to_batch`,
    the only place labels are built) keep every eos id, `ce_targets` (what `token_counts`
    normalises by) counts the eos targets, and CE's gradient reaches the logits predicting them."""
    fast(eos_token=ENDOFTEXT).save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    ids = tokenizer("def f(): pass").input_ids + [eos] + tokenizer("x = 1").input_ids + [eos]
    batch = to_batch(torch.tensor([ids]).numpy())  # (1, T): two documents packed, eos between
    labels = batch["labels"][0]
    at_eos = labels == eos
    assert int(at_eos.sum()) == 2 and not bool((labels == -100).any())
    assert int(ce_targets(batch["labels"]).sum()) == len(ids) - 1  # every next token, eos included
    logits = torch.randn(1, len(ids), len(tokenizer), dtype=torch.float64, requires_grad=True)
    ce_loss(logits, batch["labels"]).backward()
    predicting_eos = at_eos[1:].nonzero().flatten()  # logits[:, t] predict labels[:, t + 1]
    for t in predicting_eos.tolist():
        assert logits.grad[0, t, eos] < 0  # CE pulls the eos logit up where eos comes next


# ---------------------------------------------------------------------------------------------
# The data cache and the run's tokenizer.


def test_cache_reuses_data_only_on_full_identity(corpus, tmp_path, capsys):
    """The bug: Instruct's data was served from base's entry (same tokenizer.json), with base's eos."""
    cache = tmp_path / "cache"
    base_dir, instruct_dir = tmp_path / "base", tmp_path / "instruct"
    qwen_base().save_pretrained(base_dir)
    qwen_instruct().save_pretrained(instruct_dir)
    base_data = ensure_prepared(data_cfg(corpus, cache, tokenizer=str(base_dir)), max_positions=64)
    capsys.readouterr()
    instruct_data = ensure_prepared(data_cfg(corpus, cache, tokenizer=str(instruct_dir)), max_positions=64)
    assert instruct_data != base_data
    assert "reusing" not in capsys.readouterr().out
    base_manifest, instruct_manifest = read_manifest(base_data), read_manifest(instruct_data)
    assert base_manifest["tokenizer_hash"] != instruct_manifest["tokenizer_hash"]
    assert (base_manifest["eos_id"], instruct_manifest["eos_id"]) == (0, 2)
    # Each entry's documents end in its own eos, and its tokenizer copy has the same identity.
    assert (read_split(instruct_data / "train") == 2).any() and not (
        read_split(base_data / "train") == 2
    ).any()
    copy = AutoTokenizer.from_pretrained(instruct_data / "tokenizer")
    assert tokenizer_identity(copy) == instruct_manifest["tokenizer_hash"]
    assert copy.eos_token == IM_END and copy.chat_template == CHAT
    # The same identity again (a save_pretrained copy, as an exported teacher carries): reused.
    again = tmp_path / "instruct-copy"
    AutoTokenizer.from_pretrained(instruct_dir).save_pretrained(again)
    assert ensure_prepared(data_cfg(corpus, cache, tokenizer=str(again)), max_positions=64) == instruct_data
    # The manifest records the largest id, checked against the models' embeddings before a run.
    biggest = max(int(read_split(instruct_data / s).max()) for s in ("train", "eval"))
    assert instruct_manifest["max_token_id"] == biggest


def test_teacher_tokenizer_is_the_default_and_the_runs_own(corpus, tmp_path):
    teacher = save_model(tmp_path / "teacher", qwen_instruct(), bos_token_id=None, eos_token_id=2)
    bare = save_model(tmp_path / "bare")
    config = load_config(None, [f"teacher={teacher}", f"data.source={corpus}", "data.seq_len=16"])
    assert has_tokenizer(str(teacher)) and not has_tokenizer(str(bare))
    assert default_tokenizer(config) == ("teacher", str(teacher))
    # Workers load the teacher's own tokenizer, not the data cache's copy of one with equal content.
    assert run_tokenizer_spec(config, tmp_path / "cached") == str(teacher)
    explicit = dataclasses.replace(config, data=dataclasses.replace(config.data, tokenizer=str(teacher)))
    assert default_tokenizer(explicit) is None and run_tokenizer_spec(explicit, tmp_path) == str(teacher)
    for overrides in ([f"teacher={bare}"], ["teacher=preset:tiny-llama"]):
        other = load_config(None, [*overrides, f"data.source={corpus}"])
        assert default_tokenizer(other) is None
        assert run_tokenizer_spec(other, tmp_path / "d") == str(tmp_path / "d" / "tokenizer")
    # A preset teacher and a pretrained student: the student's tokenizer.
    student_first = load_config(None, ["teacher=preset:tiny-llama", f"student={teacher}"])
    assert default_tokenizer(student_first) == ("student", str(teacher))


def test_prepare_run_uses_the_teachers_tokenizer_and_says_so(corpus, tmp_path, capsys):
    from orchestrator.train.trainer import prepare_run

    no_pad = fast(eos_token=ENDOFTEXT)  # GPT-2-shaped: no pad token
    teacher = save_model(tmp_path / "teacher", no_pad, bos_token_id=None, eos_token_id=0)
    config = load_config(
        None,
        [
            f"teacher={teacher}",
            f"data.source={corpus}",
            "data.seq_len=16",
            f"data.cache_dir={tmp_path / 'c'}",
        ],
    )
    check_data_fits_models(config)
    capsys.readouterr()
    prepared = prepare_run(config, tmp_path / "run")
    out = capsys.readouterr().out
    assert f"data.tokenizer not set: tokenising with the teacher's tokenizer ({teacher})" in out
    assert "has no pad token: using eos '<|endoftext|>' (id 0) as pad" in out
    assert prepared.runtime.tokenizer == str(teacher)
    assert read_manifest(prepared.data_dir)["tokenizer_hash"] == tokenizer_identity(no_pad)
    # The demo prepares the same run again for its report: the notes are not printed twice.
    again = prepare_run(config, tmp_path / "run", announce=False)
    out = capsys.readouterr().out
    assert again.data_dir == prepared.data_dir and "raydistill:" not in out, out


# ---------------------------------------------------------------------------------------------
# Data against models (preflight's rules; the CLI cases: tests/test_bad_input.py).


@pytest.fixture(scope="module")
def base_data(corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base-data")
    qwen_base().save_pretrained(root / "tok")
    return ensure_prepared(data_cfg(corpus, root / "cache", tokenizer=str(root / "tok")), max_positions=64)


def config_for(data: Path, **models) -> object:
    return load_config(
        None, [f"{k}={v}" for k, v in models.items()] + [f"data.source={data}", "data.seq_len=16"]
    )


def test_data_of_another_tokenizer_than_the_teachers_is_refused(base_data, tmp_path):
    teacher = save_model(tmp_path / "instruct", qwen_instruct(), bos_token_id=None, eos_token_id=2)
    with pytest.raises(ConfigError) as error:
        check_data_fits_models(config_for(base_data, teacher=teacher))
    message = str(error.value)
    assert message.startswith(f"teacher='{teacher}' is pretrained with another tokenizer than the data's")
    assert f"data.source='{base_data}'" in message
    assert "eos '<|im_end|>' vs '<|endoftext|>'" in message and "chat template" in message
    # The teacher that has the data's tokenizer passes.
    same = save_model(tmp_path / "base", qwen_base(), bos_token_id=None, eos_token_id=0, pad_token_id=0)
    check_data_fits_models(config_for(base_data, teacher=same))


def test_data_tokenizer_other_than_the_prepared_dirs_is_refused(base_data, tmp_path):
    qwen_instruct().save_pretrained(tmp_path / "instruct")
    config = config_for(base_data, teacher="preset:tiny-llama")
    teacher = save_model(tmp_path / "t", bos_token_id=None, eos_token_id=0)
    config = config_for(base_data, teacher=teacher)
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, tokenizer=str(tmp_path / "instruct"))
    )
    with pytest.raises(
        ConfigError, match=r"^data.tokenizer='.*instruct': data.source .* was tokenised by another"
    ):
        check_data_fits_models(config)


def test_ids_past_an_embedding_are_refused(base_data, tmp_path):
    max_id = read_manifest(base_data)["max_token_id"]
    small = save_model(tmp_path / "small", vocab=max_id, bos_token_id=None, eos_token_id=0)  # no tokenizer
    with pytest.raises(ConfigError) as error:
        check_data_fits_models(config_for(base_data, teacher=small))
    assert str(error.value) == (
        f"teacher='{small}': its embedding has {max_id} rows (config.json vocab_size) but the data "
        f"(data.source='{base_data}') holds ids up to {max_id}"
    )
    # The student too (a preset teacher takes the data's vocabulary).
    with pytest.raises(ConfigError, match=r"^student="):
        check_data_fits_models(config_for(base_data, teacher="preset:tiny-llama", student=small))
    # The workers read logits over every id of the run's tokenizer (the data's), used by the data or
    # not: data that stops short of the tokenizer's last ids (its manifest says so) needs them too.
    import shutil

    tokens = len(qwen_base())
    fewer = Path(shutil.copytree(base_data, tmp_path / "fewer-ids"))
    manifest = json.loads((fewer / "manifest.json").read_text())
    (fewer / "manifest.json").write_text(json.dumps({**manifest, "max_token_id": tokens - 11}))
    short = save_model(tmp_path / "short", vocab=tokens - 10, bos_token_id=None, eos_token_id=0)
    with pytest.raises(ConfigError) as error:
        check_data_fits_models(config_for(fewer, teacher=short))
    assert str(error.value) == (
        f"teacher='{short}': its embedding has {tokens - 10} rows (config.json vocab_size) but the data's "
        f"tokenizer (data.source='{fewer}') has {tokens} tokens; every token id needs a row"
    )
    # Rows past the tokenizer are padding: fine.
    for vocab in (tokens, tokens + 64):
        fits = save_model(tmp_path / f"fits{vocab}", vocab=vocab, bos_token_id=None, eos_token_id=0)
        check_data_fits_models(config_for(base_data, teacher=fits))


def test_max_id_is_read_from_the_shards_when_the_manifest_lacks_it(base_data, tmp_path):
    import shutil

    old = Path(shutil.copytree(base_data, tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    expected = manifest.pop("max_token_id")
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert data_models._prepared_max_id(old, manifest) == expected
    column = pq.read_table(next((old / "train").glob("*.parquet"))).column("input_ids")
    assert expected >= max(max(row) for row in column.to_pylist())


def test_special_ids_disagreeing_with_the_tokenizer_are_refused(base_data, tmp_path):
    wrong = save_model(tmp_path / "wrong", bos_token_id=None, eos_token_id=2)  # data's eos is 0
    with pytest.raises(ConfigError) as error:
        check_data_fits_models(config_for(base_data, teacher=wrong))
    assert str(error.value) == (
        f"teacher='{wrong}': config.json eos_token_id=2, but the data's tokenizer "
        f"(data.source='{base_data}') has eos '<|endoftext|>' = 0"
    )
    # A list (Llama 3 style) that holds the tokenizer's eos agrees; no bos in the tokenizer: not compared.
    listed = save_model(tmp_path / "listed", bos_token_id=7, eos_token_id=[2, 0])
    check_data_fits_models(config_for(base_data, teacher=listed))


def test_pretrained_teacher_without_tokenizer_on_a_corpus_is_refused(corpus, tmp_path):
    bare = save_model(tmp_path / "bare", bos_token_id=None, eos_token_id=0)
    config = load_config(None, [f"teacher={bare}", f"data.source={corpus}"])
    with pytest.raises(
        ConfigError, match=rf"^teacher='{bare}' has no tokenizer files and data.tokenizer is not set"
    ):
        check_data_fits_models(config)
    # Naming the tokenizer the teacher was trained with is enough.
    qwen_base().save_pretrained(tmp_path / "tok")
    named = dataclasses.replace(
        config, data=dataclasses.replace(config.data, tokenizer=str(tmp_path / "tok"))
    )
    check_data_fits_models(named)


def test_presets_alone_are_not_checked(base_data):
    check_data_fits_models(config_for(base_data, teacher="preset:tiny-llama"))
