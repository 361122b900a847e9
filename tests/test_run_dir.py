"""One run = one directory: a new dir is created, the same run resumes, a different run is refused."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.config import load_config
from orchestrator.errors import UserError
from orchestrator.train.run_dir import CONFIG_FILE, RESUMABLE_CHANGES, incompatible_keys, prepare_run_dir


def config(*overrides: str):
    return load_config(None, list(overrides))


def snapshot(directory) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# incompatible_keys


def test_identical_configs_are_compatible():
    data = config().to_dict()
    assert incompatible_keys(data, config().to_dict()) == []


def test_changed_training_keys_are_named_dotted_and_sorted():
    old = config().to_dict()
    new = config("train.seed=1", "loss.kd_temperature=4", "teacher=preset:tiny-gpt2").to_dict()
    assert incompatible_keys(old, new) == ["loss.kd_temperature", "teacher", "train.seed"]


@pytest.mark.parametrize("key", sorted(RESUMABLE_CHANGES))
def test_resumable_keys_may_change(key):
    old = config().to_dict()
    new = config().to_dict()
    section, name = key.split(".")
    value = new[section][name]
    new[section][name] = value + 1 if isinstance(value, (int, float)) else f"{value}-elsewhere"
    assert incompatible_keys(old, new) == []


def test_key_missing_on_one_side_is_incompatible():
    old = config().to_dict()
    new = config().to_dict()
    del old["loss"]["jsd_beta"]
    assert incompatible_keys(old, new) == ["loss.jsd_beta"]
    assert incompatible_keys(new, old) == ["loss.jsd_beta"]


def test_layer_map_change_is_incompatible():
    old = config().to_dict()
    new = config("loss.layer_map=[[0, 1], [1, 3]]").to_dict()
    assert incompatible_keys(old, new) == ["loss.layer_map"]


# ---------------------------------------------------------------------------------------------
# prepare_run_dir


def test_new_run_dir_is_created_with_the_resolved_config(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    cfg = config("train.lr=3e-4", "train.seed=5")
    assert prepare_run_dir(run_dir, cfg) is False
    assert run_dir.is_dir()
    written = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    assert written == cfg.to_dict()
    assert load_config(run_dir / CONFIG_FILE) == cfg


def test_existing_empty_dir_is_a_new_run(tmp_path):
    assert prepare_run_dir(tmp_path, config()) is False
    assert (tmp_path / CONFIG_FILE).exists()


def test_same_config_resumes(tmp_path):
    run_dir = tmp_path / "run"
    assert prepare_run_dir(run_dir, config("train.seed=3")) is False
    (run_dir / "metrics.jsonl").write_text('{"step": 5}\n')
    assert prepare_run_dir(run_dir, config("train.seed=3")) is True
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 5}\n'  # resuming keeps the run's files


def test_changing_a_resumable_key_resumes_and_records_it(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, config("train.log_every=10"))
    assert prepare_run_dir(run_dir, config("train.log_every=2")) is True
    assert load_config(run_dir / CONFIG_FILE).train.log_every == 2


def test_changing_the_seed_is_refused_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, config("train.seed=0"))
    (run_dir / "marker").write_text("keep me")
    before = snapshot(run_dir)
    with pytest.raises(UserError) as info:
        prepare_run_dir(run_dir, config("train.seed=1"))
    message = str(info.value)
    assert "train.seed" in message
    assert str(run_dir) in message
    assert snapshot(run_dir) == before


def test_refusal_lists_at_most_five_keys(tmp_path):
    prepare_run_dir(tmp_path, config())
    changed = config(
        "train.seed=1",
        "train.lr=0.5",
        "train.max_steps=300",
        "train.weight_decay=0.5",
        "train.grad_clip=2",
        "train.micro_batch_size=2",
    )
    with pytest.raises(UserError) as info:
        prepare_run_dir(tmp_path, changed)
    assert "..." in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_non_empty_dir_without_config_is_refused_and_untouched(tmp_path):
    run_dir = tmp_path / "someone-elses"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("important")
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="not empty") as info:
        prepare_run_dir(run_dir, config())
    assert str(run_dir) in str(info.value)
    assert snapshot(run_dir) == before
    assert not (run_dir / CONFIG_FILE).exists()


def test_file_path_is_refused(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("data")
    with pytest.raises(UserError, match="is a file"):
        prepare_run_dir(path, config())
    assert path.read_text() == "data"


def test_run_dir_with_broken_config_is_refused_and_untouched(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        prepare_run_dir(tmp_path, config())
    assert (tmp_path / CONFIG_FILE).read_text() == "train: [1, 2\n"


@pytest.mark.parametrize("text", ["just some notes\n", "- a\n- b\n", "42\n"])
def test_run_dir_with_a_foreign_config_yaml_is_refused_and_untouched(tmp_path, text):
    # Another tool's config.yaml (not a mapping) is refused as a UserError, not an AttributeError.
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(UserError, match="not a raydistill config"):
        prepare_run_dir(tmp_path, config())
    assert (tmp_path / CONFIG_FILE).read_text() == text


def test_run_dir_with_a_binary_config_yaml_is_refused(tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="refusing to reuse"):
        prepare_run_dir(tmp_path, config())
    assert (tmp_path / CONFIG_FILE).read_bytes() == b"\xff\xfe\x00\x81"


def test_compiling_is_not_a_resumable_change():
    """Compiled kernels round differently, so a compiled run does not reproduce an eager one exactly
    (the demo's student: 42.76 against 42.20 from a compiled or an eager teacher, BENCHMARKS.md):
    switching `train.compile` makes a different run, and a different cached teacher."""
    from orchestrator.train.run_dir import incompatible_keys

    assert incompatible_keys({"train": {"compile": False}}, {"train": {"compile": True}}) == ["train.compile"]
    assert incompatible_keys({"train": {"log_every": 10}}, {"train": {"log_every": 20}}) == []
