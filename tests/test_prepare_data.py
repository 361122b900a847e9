"""`raydistill prepare-data` end to end on a small temp corpus of real text (stdlib files), no Ray."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.config import DataConfig
from orchestrator.data.corpus import stdlib_dir
from orchestrator.data.prepare import ensure_prepared, read_manifest
from orchestrator.data.shards import read_split
from orchestrator.data.tokenizer_training import tokenizer_hash
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
VOCAB = "300"  # small: BPE training takes well under a second
SEQ_LEN = 64
ROWS_PER_SHARD = 100
# Non-ASCII text, and the eos token's text inside a document (it must stay text, not become an eos id).
EXTRA_DOC = "# Grüße, naïve café — 日本語テキスト ✓\nliteral = '<|eos|>'  # not a separator\n" * 20


def _stdlib_sample(count: int = 20) -> list[Path]:
    files = sorted(p for p in stdlib_dir().glob("*.py") if 2_000 <= p.stat().st_size <= 12_000)
    return files[:count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~20 stdlib files, one extra unicode doc, one undecodable file, one empty file."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    for index, path in enumerate(_stdlib_sample()):
        shutil.copy(path, (root / "sub" if index % 3 == 0 else root) / path.name)
    (root / "unicode.txt").write_text(EXTRA_DOC, encoding="utf-8")
    (root / "latin1.txt").write_bytes(b"caf\xe9 \xff\xfe not utf-8\n")
    (root / "empty.txt").write_text("  \n\n")
    (root / ".hidden.txt").write_text("never read")
    return root


def _documents(corpus_dir: Path) -> list[str]:
    """The documents the corpus should yield, read independently of orchestrator.data.corpus."""
    docs = []
    for path in sorted(corpus_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if text.strip():
                docs.append(text)
    return docs


def _prepare(corpus_dir: Path, out: Path, *extra: str) -> int:
    argv = ["prepare-data", "--corpus", str(corpus_dir), "--out", str(out), "--train-tokenizer", VOCAB]
    argv += ["--seq-len", str(SEQ_LEN), "--eval-fraction", "0.1", "--rows-per-shard", str(ROWS_PER_SHARD)]
    return main(argv + list(extra))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    assert _prepare(corpus, out) == 0
    return out


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.rglob("*"))
    }


def _tables(out: Path) -> dict[str, pa.Table]:
    return {
        f"{split}/{p.name}": pq.read_table(p)
        for split in ("train", "eval")
        for p in sorted((out / split).iterdir())
    }


def test_layout_and_manifest(prepared, corpus):
    assert sorted(os.listdir(prepared)) == ["eval", "manifest.json", "tokenizer", "train"]
    assert not [p for p in prepared.parent.iterdir() if p.name != "out"]  # no staging dir left behind
    manifest = read_manifest(prepared)
    for split in ("train", "eval"):
        shard_files = sorted(os.listdir(prepared / split))
        # Only Parquet files: ray.data.read_parquet(str(out / split)) reads the dir as is.
        assert shard_files and all(f.endswith(".parquet") for f in shard_files)
        assert len(shard_files) == manifest[f"{split}_shards"]
        rows = 0
        for name in shard_files:
            table = pq.read_table(prepared / split / name)
            assert table.schema == pa.schema([("input_ids", pa.list_(pa.int32()))])
            assert 0 < table.num_rows <= ROWS_PER_SHARD
            rows += table.num_rows
        assert rows == manifest[f"{split}_sequences"]
    assert manifest["train_shards"] > 1

    docs = _documents(corpus)
    assert manifest["documents"] == len(docs)
    assert manifest["files_read"] == len(docs) + 2
    assert (manifest["skipped_undecodable"], manifest["skipped_empty"]) == (1, 1)
    assert manifest["train_documents"] + manifest["eval_documents"] == len(docs)
    assert (manifest["seq_len"], manifest["vocab_size"], manifest["seed"]) == (SEQ_LEN, 300, 0)
    assert manifest["source"] == str(corpus.resolve())
    packed = (manifest["train_sequences"] + manifest["eval_sequences"]) * SEQ_LEN
    assert 0 <= manifest["tokens"] - packed == manifest["dropped_tokens"] < 2 * SEQ_LEN
    assert 0.03 < manifest["eval_sequences"] / (packed / SEQ_LEN) < 0.15  # ~ --eval-fraction 0.1


def test_round_trip_decoded_shards_equal_the_packed_documents(prepared, corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared / "tokenizer"))
    manifest = read_manifest(prepared)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert len(tokenizer) == manifest["vocab_size"]
    assert tokenizer_hash(tokenizer) == manifest["tokenizer_hash"]

    # Eval is written in packing order: doc, eos, doc, eos, ... cut at N * seq_len. Every piece before
    # an eos is a whole document, byte for byte, and the piece after the last eos is the start of one.
    docs = _documents(corpus)
    unused = list(docs)
    ids = read_split(prepared / "eval")  # (N, seq_len)
    assert ids.shape == (manifest["eval_sequences"], SEQ_LEN)
    flat = ids.reshape(-1)
    cuts = np.flatnonzero(flat == tokenizer.eos_token_id)
    starts = np.concatenate([[0], cuts + 1])
    for start, end in zip(starts[:-1], cuts):
        text = tokenizer.decode(flat[start:end].tolist(), skip_special_tokens=False)
        assert text in unused, f"eval: a packed piece is not one whole document: {text[:80]!r}"
        unused.remove(text)
    tail = tokenizer.decode(flat[starts[-1] :].tolist()).rstrip("\ufffd")  # may end mid-character
    assert any(doc.startswith(tail) for doc in unused)
    pieces = [tokenizer.decode(flat[s:e].tolist()) for s, e in zip(starts[:-1], cuts)]
    whole = tokenizer.decode(flat.tolist(), skip_special_tokens=False).rstrip("\ufffd")
    assert whole == "".join(p + "<|eos|>" for p in pieces) + tail
    eval_docs = [d for d in docs if d not in unused or tail and d.startswith(tail)]

    # Train: exactly the rows of the other documents packed in file order (this corpus is one batch),
    # stored in another order.
    stored, packed = read_split(prepared / "train"), _train_packed(tokenizer, docs, eval_docs)
    assert stored.shape == (manifest["train_sequences"], SEQ_LEN) == packed.shape
    assert sorted(map(bytes, stored)) == sorted(map(bytes, packed))


def _train_packed(tokenizer, docs: list[str], eval_docs: list[str]) -> np.ndarray:
    from orchestrator.data.tokenizer_training import text_encoder

    train = [d for d in docs if d not in eval_docs]
    flat = np.concatenate(
        [np.append(ids, tokenizer.eos_token_id) for ids in text_encoder(tokenizer).encode(train)]
    )
    return flat[: len(flat) // SEQ_LEN * SEQ_LEN].reshape(-1, SEQ_LEN).astype(np.int32)


def test_train_rows_are_stored_shuffled_so_steps_mix_documents(prepared, corpus):
    # Readers stream the shards in order: stored in packing order, consecutive steps would train on
    # one document after another (the demo's teacher reached ppl 37.6 that way, 34.1 shuffled).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared / "tokenizer"))
    stored = read_split(prepared / "train")
    # Packing order: a row mostly continues the previous row's document (no eos at its end).
    eval_text = tokenizer.decode(read_split(prepared / "eval").reshape(-1).tolist())
    docs = _documents(corpus)
    packed = _train_packed(tokenizer, docs, [d for d in docs if d in eval_text])
    position = {bytes(row): i for i, row in enumerate(packed)}
    where = np.array([position[bytes(row)] for row in stored])
    # Stored order: neighbours are almost never neighbouring pieces of the packed stream.
    assert np.sum(np.diff(where) == 1) < 0.05 * len(stored)


def test_eos_text_inside_a_document_stays_text(prepared):
    from transformers import AutoTokenizer

    from orchestrator.data.tokenizer_training import text_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(prepared / "tokenizer"))
    (ids,) = text_encoder(tokenizer).encode([EXTRA_DOC])
    assert tokenizer.eos_token_id not in ids.tolist() and tokenizer.bos_token_id not in ids.tolist()
    assert tokenizer.decode(ids.tolist()) == EXTRA_DOC


def test_second_run_reuses_the_output(prepared, corpus, capsys):
    before = _snapshot(prepared)
    capsys.readouterr()
    assert _prepare(corpus, prepared) == 0
    assert "reusing" in capsys.readouterr().out
    assert _snapshot(prepared) == before


def test_same_seed_gives_identical_shards_and_tokenizer(prepared, corpus, tmp_path):
    assert _prepare(corpus, tmp_path / "again") == 0
    assert _tables(tmp_path / "again") == _tables(prepared)
    assert (tmp_path / "again/tokenizer/tokenizer.json").read_bytes() == (
        prepared / "tokenizer/tokenizer.json"
    ).read_bytes()
    assert read_manifest(tmp_path / "again") == read_manifest(prepared)

    assert _prepare(corpus, tmp_path / "seed1", "--seed", "1") == 0
    assert _tables(tmp_path / "seed1") != _tables(prepared)  # another split and packing order


def test_existing_tokenizer_gives_the_same_shards(prepared, corpus, tmp_path):
    out = tmp_path / "pretrained"
    argv = [
        "prepare-data",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--tokenizer",
        str(prepared / "tokenizer"),
    ]
    argv += ["--seq-len", str(SEQ_LEN), "--eval-fraction", "0.1", "--rows-per-shard", str(ROWS_PER_SHARD)]
    assert main(argv) == 0
    manifest, original = read_manifest(out), read_manifest(prepared)
    assert manifest["tokenizer_hash"] == original["tokenizer_hash"]
    assert manifest["tokenizer"] == f"sha256:{original['tokenizer_hash']}"
    assert _tables(out) == _tables(prepared)


def _bad_run(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    # Progress lines of finished stages may come first; the error itself is the one last line.
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("raydistill: error: "), lines
    assert not any("error" in line or "Traceback" in line for line in lines[:-1]), lines
    return lines[-1]


def test_no_files_found(tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    for corpus in (tmp_path / "empty_dir", tmp_path / "nothing-*.txt"):
        err = _bad_run(capsys, ["prepare-data", "--corpus", str(corpus), "--out", str(tmp_path / "out")])
        assert "no files found" in err
    err = _bad_run(
        capsys, ["prepare-data", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    )
    assert "no such file or directory" in err
    assert not (tmp_path / "out").exists()


def test_all_files_undecodable(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"\xff\xfe\xfa\xc3(")
    (corpus / "b.txt").write_bytes(b"\x80\x81 latin-1 caf\xe9")
    err = _bad_run(capsys, ["prepare-data", "--corpus", str(corpus), "--out", str(tmp_path / "out")])
    assert "nothing left" in err and "2 not UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_empty_after_filtering(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("")
    (corpus / "b.txt").write_text(" \n\t\n")
    err = _bad_run(
        capsys, ["prepare-data", "--corpus", str(corpus / "*.txt"), "--out", str(tmp_path / "out")]
    )
    assert "nothing left" in err and "2 empty" in err
    assert not (tmp_path / "out").exists()


def test_seq_len_larger_than_max_positions(corpus, prepared, tmp_path, capsys):
    argv = ["prepare-data", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--seq-len", "256"]
    err = _bad_run(capsys, argv + ["--max-positions", "128"])
    assert "256" in err and "128" in err
    # Without the flag, the limit comes from --tokenizer's config.json when it is a model dir.
    model = tmp_path / "model"
    shutil.copytree(prepared / "tokenizer", model)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 32}))
    err = _bad_run(
        capsys,
        ["prepare-data", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--tokenizer", str(model)],
    )
    assert "128" in err and "32" in err
    assert not (tmp_path / "out").exists()


def test_out_dir_holding_something_else_is_refused_and_untouched(corpus, prepared, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    err = _bad_run(capsys, ["prepare-data", "--corpus", str(corpus), "--out", str(out)])
    assert "not empty" in err
    assert _snapshot(out) == before and (out / "notes.txt").read_text() == "mine"

    (tmp_path / "file").write_text("x")
    assert "not a directory" in _bad_run(
        capsys, ["prepare-data", "--corpus", str(corpus), "--out", str(tmp_path / "file")]
    )

    # A prepared dir with other settings is refused too, naming what differs.
    before = _snapshot(prepared)
    err = _bad_run(
        capsys,
        [
            "prepare-data",
            "--corpus",
            str(corpus),
            "--out",
            str(prepared),
            "--train-tokenizer",
            VOCAB,
            "--seq-len",
            "32",
        ],
    )
    assert "seq_len 64 (requested 32)" in err
    assert _snapshot(prepared) == before


def test_corpus_too_small_for_seq_len(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("tiny")
    (corpus / "b.txt").write_text("small")
    argv = [
        "prepare-data",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "out"),
        "--train-tokenizer",
        VOCAB,
    ]
    assert "too small" in _bad_run(capsys, argv)
    assert os.listdir(tmp_path) == ["corpus"]  # neither the output nor a staging dir is left


def test_cli_subprocess_exit_code_and_one_line_error(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    exe = Path(sys.executable).parent / "raydistill"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestrator.cli"]
    result = subprocess.run(
        command + ["prepare-data", "--corpus", str(tmp_path / "empty_dir"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("raydistill: error: data.source")
        and "no files found" in lines[0]
    )
    assert "Traceback" not in result.stderr


def test_ensure_prepared_makes_then_reuses_the_cache(corpus, tmp_path, capsys):
    cache = (tmp_path / "cache").resolve()
    cfg = DataConfig(
        source=str(corpus), vocab_size=300, seq_len=32, eval_fraction=0.1, max_files=12, cache_dir=str(cache)
    )
    path = ensure_prepared(cfg, max_positions=64)
    assert path.parent == cache and (path / "manifest.json").is_file()
    manifest = read_manifest(path)
    assert manifest["files_read"] == 12 and manifest["seq_len"] == 32
    before = _snapshot(path)
    capsys.readouterr()
    assert ensure_prepared(cfg, max_positions=64) == path
    assert "reusing" in capsys.readouterr().out
    assert _snapshot(path) == before
    assert sorted(p.name for p in cache.iterdir()) == [path.name]
    # Other settings -> another cache entry.
    other = ensure_prepared(dataclasses.replace(cfg, seq_len=16))
    assert other != path and other.parent == cache

    # A prepared dir as the source is validated and returned as is.
    prepared_cfg = DataConfig(source=str(path), seq_len=32)
    assert ensure_prepared(prepared_cfg, max_positions=32) == path
    with pytest.raises(UserError, match="seq_len 32, but data.seq_len is 64"):
        ensure_prepared(DataConfig(source=str(path), seq_len=64))
    with pytest.raises(UserError, match="seq_len 32 is larger than the model's max positions 16"):
        ensure_prepared(prepared_cfg, max_positions=16)
    with pytest.raises(UserError, match="seq_len 32 is larger than the model's max positions 16"):
        ensure_prepared(cfg, max_positions=16)


def test_ensure_prepared_finds_the_data_of_a_tokenizer_with_the_same_content(corpus, tmp_path, capsys):
    """The demo's teacher is saved with a copy of the BPE its data was tokenised with: the distillation
    must reuse that data, not tokenise the corpus again, and never take another tokenizer's data."""
    from orchestrator.data.tokenizer_training import load_pretrained

    cache = (tmp_path / "cache").resolve()
    cfg = DataConfig(source=str(corpus), vocab_size=300, seq_len=32, eval_fraction=0.1, cache_dir=str(cache))
    other_vocab = ensure_prepared(dataclasses.replace(cfg, vocab_size=320), max_positions=64)
    trained = ensure_prepared(cfg, max_positions=64)
    copy = tmp_path / "teacher"
    load_pretrained(str(trained / "tokenizer")).save_pretrained(str(copy))  # as a model export saves it
    before = _snapshot(trained)
    capsys.readouterr()

    assert ensure_prepared(dataclasses.replace(cfg, tokenizer=str(copy)), max_positions=64) == trained
    assert "same content" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == sorted([trained.name, other_vocab.name])
    assert _snapshot(trained) == before
    # Other settings with that tokenizer: a new entry, tokenised with it.
    shorter = ensure_prepared(dataclasses.replace(cfg, tokenizer=str(copy), seq_len=16), max_positions=64)
    assert shorter not in (trained, other_vocab)
    assert read_manifest(shorter)["tokenizer_hash"] == read_manifest(trained)["tokenizer_hash"]


def test_data_prepared_by_an_older_format_is_refused_untouched(prepared, corpus, tmp_path, capsys):
    # Format 1 stored train rows in packing order: reusing it would silently train on document order.
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    before = _snapshot(old)
    error = _bad_run(
        capsys, ["prepare-data", "--corpus", str(corpus), "--out", str(old), "--train-tokenizer", VOCAB]
    )
    assert "format_version 1, this raydistill reads 3; prepare the data again" in error, error
    with pytest.raises(UserError, match="format_version 1"):
        ensure_prepared(DataConfig(source=str(old), seq_len=SEQ_LEN))
    assert _snapshot(old) == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_stage_lines_in_a_log(corpus, tmp_path, tty):
    from orchestrator.data.prepare import _Progress, prepare

    stream = _Terminal() if tty else io.StringIO()
    data_cfg = DataConfig(source=str(corpus), vocab_size=int(VOCAB), seq_len=SEQ_LEN, eval_fraction=0.1)
    prepare(
        data_cfg, tmp_path / "out", rows_per_shard=ROWS_PER_SHARD, progress=_Progress(stream, mininterval=0)
    )
    text = stream.getvalue()
    # What stays on screen of each line: the text after its last carriage return.
    stages = [line.split("\r")[-1].strip() for line in text.split("\n") if line.strip()]
    assert [line.split()[0] for line in stages] == ["found", "trained", "tokenized"], stages
    assert f"tokenized {len(_documents(corpus))} records" in stages[2] and "tokens/s" in stages[2]
    if tty:  # tqdm's bars, each cleared before its stage line
        assert "training byte-level BPE tokenizer (vocab 300) ..." in text
        assert "tokenizing" in text and "tok/s" in text and "records" in text
    else:  # a log gets exactly the stage lines: no bar, no carriage return
        assert "\r" not in text and len(text.split("\n")) == 4  # three lines and the final newline
