"""`prepare-data` from each source format through the Ray Data pipeline to Parquet shards (format v3),
read back and checked; bad input refused in one line with nothing written; reuse only on the full
identity; one short `raydistill train` on a JSONL chat source. One Ray for the module."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.config import DataConfig
from orchestrator.data.prepare import ensure_prepared, read_manifest

ROOT = Path(__file__).resolve().parents[1]
CHAT_FILE = ROOT / "data" / "stdlib_chat.jsonl"
pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True, scope="module")
def _ray(ray_cluster):
    yield


def _prepare(source: Path, out: Path, *flags: str, vocab: str = "320", seq_len: int = 48) -> dict:
    argv = ["prepare-data", "--corpus", str(source), "--out", str(out), "--train-tokenizer", vocab]
    assert main([*argv, "--seq-len", str(seq_len), "--eval-fraction", "0.1", *flags]) == 0
    return read_manifest(out)


def _table(out: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / split).glob("*.parquet")))


def _rows(table: pa.Table, column: str) -> np.ndarray:
    values = table.column(column).combine_chunks()
    return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1)  # (N*T,) -> (N, T)


def _bad(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("raydistill: error: "), lines
    assert not any("Traceback" in line or "error" in line for line in lines[:-1]), lines
    return lines[-1]


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


# The usual convention: the completion starts with its own space (no token spans the two parts).
PAIRS = [{"prompt": f"What is {i} times 3?", "completion": f" It is {3 * i}."} for i in range(120)]


# ---------------------------------------------------------------------------------------------
# Each format, end to end.


def test_jsonl_text_records_are_packed_with_the_source_identity(tmp_path):
    docs = [{"body": f"def f{i}(x):\n    return x + {i}\n" * 4, "id": i} for i in range(200)]
    source = _jsonl(tmp_path / "code.jsonl", docs)
    manifest = _prepare(source, tmp_path / "out", "--text-field", "body")
    assert (manifest["format"], manifest["record_kind"], manifest["loss_on"]) == ("jsonl", "text", "all")
    assert manifest["columns"] == ["input_ids"] and manifest["documents"] == 200
    stat = source.stat()
    assert manifest["source_files"] == [[str(source), stat.st_size, stat.st_mtime_ns]]
    assert manifest["source_identity"]["files"] == 1 and manifest["text_field"] == "body"
    for split in ("train", "eval"):
        table = _table(tmp_path / "out", split)
        assert table.schema.names == ["input_ids"] and table.num_rows == manifest[f"{split}_sequences"]
        assert _rows(table, "input_ids").shape[1] == 48
    assert manifest["trained_tokens"] == (manifest["train_sequences"] + manifest["eval_sequences"]) * 48


def test_jsonl_chat_rows_are_padded_samples_trained_on_assistant_turns(tmp_path):
    from transformers import AutoTokenizer

    lines = CHAT_FILE.read_text().splitlines()[:80]
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(lines) + "\n")
    manifest = _prepare(source, tmp_path / "out", seq_len=256)
    assert (manifest["record_kind"], manifest["loss_on"]) == ("chat", "assistant")
    assert manifest["columns"] == ["input_ids", "loss_mask", "attention_mask"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out" / "tokenizer"))
    assert "<|im_start|>" in tokenizer.get_vocab() and tokenizer.chat_template
    rows = {split: _table(tmp_path / "out", split) for split in ("train", "eval")}
    assert sum(t.num_rows for t in rows.values()) == 80 - manifest["without_target"]
    trained = 0
    for table in rows.values():
        ids, loss, attention = (_rows(table, c) for c in ("input_ids", "loss_mask", "attention_mask"))
        assert ids.shape[1] == 256 and loss.dtype == np.int8 and attention.dtype == np.int8
        assert np.all(loss <= attention)  # no trained target in padding
        # Right padding: ones then zeros, pad id where attention is 0.
        assert np.all(np.diff(attention.astype(int), axis=1) <= 0)
        assert np.all(ids[attention == 0] == manifest["pad_id"])
        trained += int(loss.sum())
        # The trained text of a row is its assistant turns, never a user's.
        row = int(np.argmax(loss.sum(axis=1)))
        text = tokenizer.decode(ids[row][loss[row] == 1].tolist())
        assert "Python" in text or "module" in text or "`" in text
    assert trained == manifest["trained_tokens"] < manifest["tokens"]


def test_jsonl_prompt_completion_trains_on_the_completion_and_eos(tmp_path):
    from transformers import AutoTokenizer

    manifest = _prepare(_jsonl(tmp_path / "pairs.jsonl", PAIRS), tmp_path / "out", seq_len=32)
    assert (manifest["record_kind"], manifest["loss_on"]) == ("pair", "completion")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out" / "tokenizer"))
    completions = {p["completion"] + tokenizer.eos_token for p in PAIRS}
    table = _table(tmp_path / "out", "train")
    ids, loss = _rows(table, "input_ids"), _rows(table, "loss_mask")
    for row in range(len(ids)):
        assert tokenizer.decode(ids[row][loss[row] == 1].tolist(), skip_special_tokens=False) in completions


def test_parquet_files_read_by_the_text_field_column(tmp_path):
    source = tmp_path / "pq"
    source.mkdir()
    docs = [{"content": f"value_{i} = {i} * {i}\n" * 6, "n": i} for i in range(160)]
    pq.write_table(pa.Table.from_pylist(docs[:80]), source / "a.parquet")
    pq.write_table(pa.Table.from_pylist(docs[80:]), source / "b.parquet")
    manifest = _prepare(source, tmp_path / "out", "--text-field", "content")
    assert (manifest["format"], manifest["documents"], manifest["source_identity"]["files"]) == (
        "parquet",
        160,
        2,
    )
    assert manifest["train_documents"] + manifest["eval_documents"] == 160
    assert _rows(_table(tmp_path / "out", "train"), "input_ids").shape == (manifest["train_sequences"], 48)


def test_hf_save_to_disk_dir_and_a_separate_eval_source(tmp_path):
    import datasets

    datasets.Dataset.from_list(PAIRS[:100]).save_to_disk(str(tmp_path / "hf_train"))
    datasets.Dataset.from_list(PAIRS[100:]).save_to_disk(str(tmp_path / "hf_eval"))
    manifest = _prepare(tmp_path / "hf_train", tmp_path / "out", "--eval-source", str(tmp_path / "hf_eval"))
    assert (manifest["format"], manifest["record_kind"]) == ("hf", "pair")
    assert (manifest["train_sequences"], manifest["eval_sequences"]) == (100, 20)
    assert manifest["eval_source"]["format"] == "hf" and manifest["eval_fraction"] is None


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no output dir and no staging dir left.


def _prepare_argv(source, out, *flags) -> list[str]:
    return ["prepare-data", "--corpus", str(source), "--out", str(out), "--train-tokenizer", "300", *flags]


def test_glob_matching_nothing_and_a_file_that_is_not_parquet(tmp_path, capsys):
    out = tmp_path / "out"
    line = _bad(capsys, _prepare_argv(tmp_path / "nothing-*.jsonl", out))
    assert "no files found matching the glob" in line
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "fake.parquet").write_text("not parquet at all")
    line = _bad(capsys, _prepare_argv(tmp_path / "pq", out))
    assert "fake.parquet is not a Parquet file" in line
    _nothing_written(out)


def test_malformed_json_line_is_named_by_file_and_line(tmp_path, capsys):
    source = _jsonl(tmp_path / "data.jsonl", PAIRS[:5])
    with source.open("a") as f:
        f.write('{"prompt": "x", "completion": \n')
    out = tmp_path / "out"
    line = _bad(capsys, _prepare_argv(source, out))
    assert f"{source}:6: not valid JSON" in line, line
    _nothing_written(out)


def test_missing_text_field_names_it_and_lists_the_fields(tmp_path, capsys):
    source = _jsonl(tmp_path / "data.jsonl", [{"body": "x", "id": 1}])
    line = _bad(capsys, _prepare_argv(source, tmp_path / "out"))
    assert "'text' (data.text_field)" in line and "'body', 'id'" in line, line
    _nothing_written(tmp_path / "out")


def test_empty_source_after_filtering(tmp_path, capsys):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    line = _bad(capsys, _prepare_argv(tmp_path / "blank.jsonl", tmp_path / "out"))
    assert "nothing left after filtering" in line
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("   \n")
    (tmp_path / "texts" / "b.txt").write_bytes(b"\xff\xfe\x00")
    line = _bad(capsys, _prepare_argv(tmp_path / "texts", tmp_path / "out"))
    assert "nothing left after filtering" in line and "1 empty" in line
    _nothing_written(tmp_path / "out")


def test_loss_on_assistant_without_any_assistant_turn_is_refused(tmp_path, capsys):
    users = [{"messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(20)]
    source = _jsonl(tmp_path / "users.jsonl", users)
    line = _bad(capsys, _prepare_argv(source, tmp_path / "out", "--loss-on", "assistant"))
    assert "assistant" in line and "20" in line, line
    _nothing_written(tmp_path / "out")


def test_chat_data_with_a_tokenizer_without_chat_template_is_refused(tmp_path, capsys):
    from orchestrator.data.tokenizer_training import save_trained, train_bpe

    save_trained(train_bpe(["plain text only"] * 10, 300), tmp_path / "tok")
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(CHAT_FILE.read_text().splitlines()[:10]) + "\n")
    argv = ["prepare-data", "--corpus", str(source), "--out", str(tmp_path / "out")]
    line = _bad(capsys, [*argv, "--tokenizer", str(tmp_path / "tok")])
    assert "chat template" in line, line
    _nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Reuse only on the full identity.


def test_reuse_needs_the_same_files_mtimes_and_loss_rule(tmp_path, capsys):
    source = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    cfg = DataConfig(source=str(source), vocab_size=300, seq_len=32, cache_dir=str(tmp_path / "cache"))
    first = ensure_prepared(cfg, max_positions=64)
    capsys.readouterr()
    assert ensure_prepared(cfg, max_positions=64) == first
    assert "reusing" in capsys.readouterr().out
    all_tokens = ensure_prepared(dataclasses.replace(cfg, loss_on="all"), max_positions=64)
    assert all_tokens != first and read_manifest(all_tokens)["loss_on"] == "all"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    touched = ensure_prepared(cfg, max_positions=64)
    assert touched not in (first, all_tokens)
    assert read_manifest(touched)["source_files"][0][2] == stat.st_mtime_ns + 10**9


# ---------------------------------------------------------------------------------------------
# One short training run on a JSONL chat source.


def test_train_on_a_jsonl_chat_source(tmp_path):
    from orchestrator.config import load_config
    from orchestrator.train.run import run_training
    from orchestrator.train.telemetry import read_metrics

    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(CHAT_FILE.read_text().splitlines()[:120]) + "\n")
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.source={source}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.seq_len=128",
            "data.vocab_size=400",
            "data.max_files=null",
            "train.max_steps=4",
            "train.log_every=1",
            "train.eval_every=4",
            "train.checkpoint_every=4",
            "train.warmup_steps=1",
            "train.eval_batches=1",
        ],
    )
    student = run_training(config, tmp_path / "run", echo=False)
    assert (student / "config.json").is_file()
    records = read_metrics(tmp_path / "run")
    assert records[-1]["step"] == 4 and any("eval/total" in r for r in records)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
