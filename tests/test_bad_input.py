"""Bad input to `raydistill train`: one line naming the key or file, exit code 2, no traceback, and
nothing already on disk (run dir, data dir, checkpoints) changed. Every case is refused on the driver
before Ray starts, so these run in-process through `orchestrator.cli.main` (a few in a subprocess to
prove the exit code and the absence of a traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_llama import tiny_llama

from orchestrator.cli import main
from orchestrator.config import DataConfig, load_config
from orchestrator.data.prepare import ensure_prepared
from orchestrator.data.shard_check import check_prepared_shards
from orchestrator.errors import UserError
from orchestrator.train import ray_session, trainer
from orchestrator.train.checkpoint_check import expected_shapes, first_mismatch
from orchestrator.train.ray_checkpoints import SNAPSHOT_FILE
from workers.checkpointing import STATE_FILE, parameter_shapes
from workers.runtime import WorkerRuntime
from workers.student_module import StudentWithLoss
from workers.worker_setup import build_models

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
RAYDISTILL = Path(sys.executable).parent / "raydistill"


@pytest.fixture(autouse=True)
def no_ray_start(monkeypatch):
    """Every refusal here must come before Ray starts."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray was started for a run that should have been refused")

    monkeypatch.setattr(ray_session, "ensure_ray", must_not_run)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `root`: its bytes and mtime."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(capsys, run_dir: Path, *overrides: str) -> str:
    """Run `raydistill train` on tiny.yaml in-process; assert exit 2 and exactly one error line."""
    argv = ["train", "--config", str(TINY), "--run-dir", str(run_dir)]
    for override in overrides:
        argv += ["--set", override]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raydistill: error: "), err
    return lines[0]


def save_model(path: Path, *, layers=2, width=32, vocab=512, positions=None) -> Path:
    model = tiny_llama(layers, width, vocab, seed=0)
    if positions is not None:
        model.config.max_position_embeddings = positions
    model.save_pretrained(path)
    return path


@pytest.fixture
def data_copy(tiny_data_dir, tmp_path) -> Path:
    """A private copy of the session's prepared dir, free to damage."""
    return Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))


# ---------------------------------------------------------------------------------------------
# Config rows, end to end through the CLI (the rules themselves: tests/test_config.py).


@pytest.mark.parametrize(
    "overrides, shown",
    [
        (["train.warmup_stpes=2"], "unknown config key 'train.warmup_stpes'"),
        (["train.max_steps=ten"], "train.max_steps: expected an integer, got 'ten'"),
        (["curriculum.phase1_end=0.7", "curriculum.phase2_end=0.5"], "curriculum.phase2_end=0.5"),
        (["curriculum.phase2_end=1.5"], "curriculum.phase2_end=1.5: must be in [0, 1]"),
        (["loss.alpha_kd=-0.5"], "loss.alpha_kd=-0.5: must be >= 0"),
        (
            ["loss.alpha_ce=0", "loss.alpha_kd=0", "loss.alpha_feature=0", "loss.alpha_attention=0"],
            "at least one must be > 0",
        ),
        (["loss.kd_temperature=0"], "loss.kd_temperature=0.0: must be > 0"),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage=4: must be 0, 1, 2 or 3"),
        (["loss.kd_kind=kl"], "loss.kd_kind='kl': must be one of"),
        (["loss.feature_norm=l2"], "loss.feature_norm='l2': must be one of"),
    ],
)
def test_bad_config_values_are_one_line_and_write_no_run_dir(tmp_path, capsys, overrides, shown):
    line = refused(capsys, tmp_path / "run", *overrides)
    assert shown in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Teacher and student paths.


def test_missing_local_model_path_is_refused_naming_key_and_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0")
    cases = [
        ("teacher", str(tmp_path / "nope" / "teacher"), "no such model directory"),
        ("student", "./models/student", "no such model directory"),
        # `org/name` is a hub id, unless `org` is a local directory: then it is a missing path.
        ("teacher", "models/teacher", "not looked up on the Hugging Face Hub"),
        ("teacher", str(tmp_path / "not-a-model"), "holds no config.json"),
        ("student", str(tmp_path / "weights.bin"), "is a file"),
        ("teacher", "preset:tiny-llamma", "unknown preset 'tiny-llamma'"),
    ]
    for key, value, shown in cases:
        line = refused(capsys, tmp_path / "run", f"{key}={value}")
        assert line.startswith(f"raydistill: error: {key}='{value}': "), line
        assert shown in line, line
        if "no such" in shown:
            assert str(tmp_path / value) in line, line
    assert not (tmp_path / "run").exists()


def test_missing_model_path_is_refused_at_once_in_a_subprocess(tmp_path):
    # Before this check transformers took a relative path for a hub id: ~26 s of retries offline.
    missing = tmp_path / "models" / "teacher"
    missing.parent.mkdir()
    result = subprocess.run(
        [str(RAYDISTILL), "train", "--config", str(TINY), "--set", "teacher=models/teacher"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"raydistill: error: teacher='models/teacher': no such model directory {missing} "
        "(a local path: not looked up on the Hugging Face Hub)"
    ]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Teacher/student pair against each other and against the data.


def test_vocab_sizes_differing_without_tokenizers_to_compare_name_both_sizes(tmp_path, capsys):
    # Padding differs inside a family (tests/test_padded_vocab.py); without tokenizer files there is
    # no telling padding from another tokenizer.
    teacher = save_model(tmp_path / "teacher", layers=3, width=48, vocab=512)
    student = save_model(tmp_path / "student", vocab=600)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", f"student={student}")
    assert line == (
        f"raydistill: error: teacher '{teacher}' (no tokenizer files, vocab_size 512) and student "
        f"'{student}' (no tokenizer files, vocab_size 600) differ in vocab_size and their tokenizers cannot "
        "be compared: save each model's tokenizer beside its config.json (tokenizer.save_pretrained(model_dir)) "
        "so raydistill can check they share one"
    )
    assert not (tmp_path / "run").exists()


def test_seq_len_above_a_real_models_max_positions_names_the_key_and_model(tmp_path, capsys):
    teacher = save_model(tmp_path / "teacher", layers=3, width=48, positions=32)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", "data.seq_len=64")
    assert line == (
        f"raydistill: error: data.seq_len=64: larger than the max positions of teacher '{teacher}' (32)"
    )
    assert not (tmp_path / "run").exists()


def test_seq_len_above_the_presets_max_positions_is_refused(tmp_path, capsys):
    line = refused(capsys, tmp_path / "run", "data.seq_len=2048")
    assert "data.seq_len=2048" in line and str(trainer.PRESET_MAX_POSITIONS) in line
    assert not (tmp_path / "run").exists()


def save_tokenizer(model_dir: Path) -> Path:
    """A byte-level BPE of other text than the session's data (same special ids 0/1/2) beside a model."""
    from orchestrator.data.tokenizer_training import save_trained, train_bpe

    save_trained(train_bpe(["SELECT * FROM t WHERE x = 1;\n"] * 8, vocab_size=300), model_dir)
    return model_dir


def test_data_tokenised_by_another_tokenizer_than_the_teachers_is_refused(data_copy, tmp_path, capsys):
    teacher = save_tokenizer(save_model(tmp_path / "teacher", layers=3, width=48))
    before = snapshot(data_copy)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", f"data.source={data_copy}")
    assert line == (
        f"raydistill: error: teacher='{teacher}' is pretrained with another tokenizer than the data's "
        f"(data.source='{data_copy}'): vocabulary/merges/normaliser; tokenise the data with the teacher's tokenizer"
    )
    assert snapshot(data_copy) == before
    assert not (tmp_path / "run").exists()


def test_an_id_in_the_data_past_an_embedding_is_refused(tiny_data_dir, tmp_path, capsys):
    teacher = save_model(tmp_path / "teacher", layers=3, width=48, vocab=256)  # no tokenizer of its own
    max_id = json.loads((tiny_data_dir / "manifest.json").read_text())["max_token_id"]
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", f"data.source={tiny_data_dir}")
    assert line == (
        f"raydistill: error: teacher='{teacher}': its embedding has 256 rows (config.json vocab_size) but the "
        f"data (data.source='{tiny_data_dir}') holds ids up to {max_id}"
    )
    assert not (tmp_path / "run").exists()


def test_special_ids_of_a_model_other_than_the_tokenizers_are_refused(tiny_data_dir, tmp_path, capsys):
    student = save_model(tmp_path / "student")
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "eos_token_id": 5}))
    line = refused(capsys, tmp_path / "run", f"student={student}", f"data.source={tiny_data_dir}")
    assert line == (
        f"raydistill: error: student='{student}': config.json eos_token_id=5, but the data's tokenizer "
        f"(data.source='{tiny_data_dir}') has eos '<|eos|>' = 1"
    )
    assert not (tmp_path / "run").exists()


def test_pretrained_teacher_without_a_tokenizer_on_a_corpus_is_refused(tmp_path, capsys):
    teacher = save_model(tmp_path / "teacher", layers=3, width=48)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", f"data.cache_dir={tmp_path / 'cache'}")
    assert line.startswith(
        f"raydistill: error: teacher='{teacher}' has no tokenizer files and data.tokenizer is not set"
    ), line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# Data.


def test_truncated_shard_is_refused_naming_the_file_data_untouched(data_copy, tmp_path, capsys):
    shard = data_copy / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # the footer is gone
    before = snapshot(data_copy)
    line = refused(capsys, tmp_path / "run", f"data.source={data_copy}")
    assert f"{shard}: not a readable Parquet file" in line, line
    assert snapshot(data_copy) == before
    assert not (tmp_path / "run").exists()


def test_garbage_shard_is_refused_in_a_subprocess(data_copy, tmp_path):
    shard = data_copy / "eval" / "part-00000.parquet"
    shard.write_bytes(b"not parquet at all")
    result = subprocess.run(
        [str(RAYDISTILL), "train", "--config", str(TINY), "--set", f"data.source={data_copy}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"raydistill: error: {shard}: "), result.stderr
    assert not (tmp_path / "runs").exists()


def test_shard_rows_disagreeing_with_the_manifest_are_refused(data_copy, tmp_path, capsys):
    manifest = json.loads((data_copy / "manifest.json").read_text())
    shard = data_copy / "train" / "part-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 1), shard)  # a shard replaced by a shorter one
    line = refused(capsys, tmp_path / "run", f"data.source={data_copy}")
    assert f"{data_copy / 'train'}: its shards hold" in line
    assert f"manifest.json records {manifest['train_sequences']}" in line


def test_shard_without_the_token_column_is_refused(data_copy):
    shard = data_copy / "eval" / "part-00000.parquet"
    pq.write_table(pa.table({"text": ["x"]}), shard)
    with pytest.raises(UserError, match=r"has no column 'input_ids'"):
        check_prepared_shards(data_copy, json.loads((data_copy / "manifest.json").read_text()))


def test_prepared_dir_whose_train_shards_were_deleted_is_refused(data_copy, tmp_path, capsys):
    for shard in (data_copy / "train").glob("*.parquet"):
        shard.unlink()
    line = refused(capsys, tmp_path / "run", f"data.source={data_copy}")
    assert line.startswith(f"raydistill: error: {data_copy / 'train'}: no .parquet shards"), line
    assert not (tmp_path / "run").exists()


def test_damaged_cache_entry_is_refused_when_reused(tiny_data_dir, tmp_path):
    # The cache path (data.source a corpus, prepared data found in data.cache_dir) checks too.
    cache = tmp_path / "cache"
    entry = cache / tiny_data_dir.name
    shutil.copytree(tiny_data_dir, entry)
    shard = entry / "eval" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:50])
    cfg = DataConfig(source="stdlib", max_files=40, vocab_size=512, seq_len=64, cache_dir=str(cache))
    with pytest.raises(UserError, match=f"{shard}: not a readable Parquet file"):
        ensure_prepared(cfg, max_positions=1024)


def test_empty_data_source_dir_is_refused(tmp_path, capsys):
    empty = tmp_path / "corpus"
    empty.mkdir()
    line = refused(capsys, tmp_path / "run", f"data.source={empty}")
    assert line.startswith(f"raydistill: error: data.source='{empty}': no files found"), line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Checkpoints of another model shape.


def loop_config(config, data_dir: Path) -> dict:
    return {
        "config": config.to_dict(),
        "runtime": WorkerRuntime(tokenizer=str(data_dir / "tokenizer"), max_positions=1024, student_dir=""),
    }


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # derived from a preset teacher
        ["derive.hidden_size=32"],  # a narrower derived student
        ["student=preset:tiny-gpt2"],
        ["student={student}"],
        ["teacher={teacher}", "student={student}"],
        [
            "teacher=none",
            "student={student}",
            "loss.alpha_kd=0",
            "loss.alpha_feature=0",
            "loss.alpha_attention=0",
        ],
    ],
)
def test_meta_device_shapes_equal_those_of_the_module_workers_train(tiny_data_dir, tmp_path, overrides):
    paths = {"student": save_model(tmp_path / "s"), "teacher": save_model(tmp_path / "t", layers=3, width=48)}
    config = load_config(TINY, [f"data.source={tiny_data_dir}", *(o.format(**paths) for o in overrides)])
    loop = loop_config(config, tiny_data_dir)
    _, _, student, loss = build_models(loop["config"], loop["runtime"])
    trained = parameter_shapes(StudentWithLoss(student, loss, config.train.attn_implementation))
    assert expected_shapes(loop) == trained


def test_first_mismatch_names_the_parameter():
    recorded = {"a": [2, 3], "b": [4]}
    assert first_mismatch(recorded, {"a": [2, 3], "b": [4]}) is None
    assert first_mismatch(recorded, {"a": [2, 5], "b": [4]}) == (
        "parameter a has shape [2, 3] in the checkpoint, [2, 5] in the model"
    )
    assert "parameter b [4] is not in the model" in first_mismatch(recorded, {"a": [2, 3]})
    assert "parameter c [1] is not in the checkpoint" in first_mismatch(
        recorded, {"a": [2, 3], "b": [4], "c": [1]}
    )


def test_student_path_now_holding_another_width_is_refused_run_dir_untouched(tiny_data_dir, tmp_path, capsys):
    """A run of student=<dir> checkpointed; then <dir> is overwritten by a wider model of the same name.
    The run dir's checkpoint records the shapes of the module the workers trained (the same function
    workers/checkpointing.py writes them with); the resume is refused before Ray starts."""
    student = save_model(tmp_path / "student", width=32)
    overrides = [f"data.source={tiny_data_dir}", f"student={student}"]
    config = load_config(TINY, overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config.to_yaml())
    loop = loop_config(config, tiny_data_dir)
    _, _, built, loss = build_models(loop["config"], loop["runtime"])
    checkpoint = run_dir / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir()
    state = {
        "step": 15,
        "tag": "step_00000015",
        "param_shapes": parameter_shapes(StudentWithLoss(built, loss)),
    }
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    (checkpoint / "latest").write_text("step_00000015")
    # Ray's list of registered checkpoints: only those are resumed from (orchestrator/train/ray_checkpoints.py).
    (run_dir / SNAPSHOT_FILE).write_text(
        json.dumps({"checkpoint_results": [{"checkpoint_dir_name": checkpoint.name}]})
    )
    before = snapshot(checkpoint)
    config_text = (run_dir / "config.yaml").read_text()

    shutil.rmtree(student)
    save_model(student, width=48)
    line = refused(capsys, run_dir, *overrides)
    assert line.startswith(f"raydistill: error: checkpoint {checkpoint} does not fit"), line
    assert (
        "parameter student.model.embed_tokens.weight has shape [512, 32] in the checkpoint, [512, 48]" in line
    )
    assert snapshot(checkpoint) == before
    assert (run_dir / "config.yaml").read_text() == config_text
