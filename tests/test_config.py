"""The typed run config: defaults <- YAML <- `--set`, and every refusal names the dotted key.

No Ray, no DeepSpeed: `orchestrator.config` is plain data and PyYAML.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import Config, config_from_dict, load_config
from orchestrator.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(overrides: list[str]) -> str:
    """The ConfigError message for defaults + `overrides`."""
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Defaults and resolution order


def test_defaults_validate():
    config = load_config()
    assert config == Config()
    assert config.teacher == "preset:tiny-llama"
    assert config.student == "derived"


def test_yaml_then_overrides_in_that_order(tmp_path):
    path = write(
        tmp_path,
        "train:\n  lr: 0.01\n  max_steps: 50\nloss:\n  kd_temperature: 4.0\n",
    )
    config = load_config(path, ["train.lr=0.02", "loss.alpha_ce=0.5", "train.lr=0.03"])
    assert config.train.lr == 0.03  # --set beats the file; the last --set of a key wins
    assert config.train.max_steps == 50  # from the file, not overridden
    assert config.loss.kd_temperature == 4.0  # from the file
    assert config.loss.alpha_ce == 0.5  # from --set alone
    assert config.loss.alpha_kd == Config().loss.alpha_kd  # untouched: the default
    assert config.train.warmup_steps == Config().train.warmup_steps


def test_override_merges_into_a_section_instead_of_replacing_it(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 50\n  warmup_steps: 5\n")
    config = load_config(path, ["train.seed=3"])
    assert (config.train.max_steps, config.train.warmup_steps, config.train.seed) == (50, 5, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3e-4", 3e-4), ("1.0e-3", 1e-3), ("2", 2.0), ("0.5", 0.5)],
)
def test_set_lr_in_exponent_form_becomes_a_float(text, expected):
    # PyYAML (YAML 1.1) reads "3e-4" as the string '3e-4'; users write learning rates that way.
    assert yaml.safe_load("3e-4") == "3e-4"
    config = load_config(None, [f"train.lr={text}"])
    assert isinstance(config.train.lr, float)
    assert config.train.lr == pytest.approx(expected)


def test_exponent_lr_in_a_yaml_file_becomes_a_float(tmp_path):
    config = load_config(write(tmp_path, "train:\n  lr: 3e-4\n"))
    assert config.train.lr == pytest.approx(0.0003)


def test_set_parses_yaml_values():
    config = load_config(
        None,
        [
            "loss.layer_map=[[0, 1], [1, 3]]",
            "data.max_files=null",
            "curriculum.enabled=false",
            "teacher=preset:tiny-gpt2",
        ],
    )
    assert config.loss.layer_map == [[0, 1], [1, 3]]
    assert config.data.max_files is None
    assert config.curriculum.enabled is False
    assert config.teacher == "preset:tiny-gpt2"


@pytest.mark.parametrize("text", ["train.lr", "", "=3", "train..lr=3", ".lr=3"])
def test_malformed_set_is_refused(text):
    message = refused([text])
    assert "--set" in message
    assert repr(text) in message


# ---------------------------------------------------------------------------------------------
# Unknown keys and wrong types


@pytest.mark.parametrize(
    ("overrides", "dotted"),
    [
        (["trian.lr=1"], "trian"),
        (["teachr=x"], "teachr"),
        (["train.lrr=1"], "train.lrr"),
        (["loss.temperature=2"], "loss.temperature"),
        (["deepspeed.zero.stage=2"], "deepspeed.zero"),
    ],
)
def test_unknown_key_is_refused_naming_the_dotted_key(overrides, dotted):
    assert f"unknown config key '{dotted}'" in refused(overrides)


def test_unknown_key_in_a_yaml_file_is_refused(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 10\n  warmup_stpes: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.warmup_stpes'"):
        load_config(path)


@pytest.mark.parametrize(
    ("overrides", "key", "shown"),
    [
        (["train.max_steps=abc"], "train.max_steps", "'abc'"),  # string for int
        (["train.max_steps=true"], "train.max_steps", "True"),  # bool for int
        (["train.max_steps=10.5"], "train.max_steps", "10.5"),  # float for int
        (["train.max_steps=10.0"], "train.max_steps", "10.0"),  # even a whole float
        (["train.lr=fast"], "train.lr", "'fast'"),  # string for float
        (["train.lr=true"], "train.lr", "True"),  # bool for float
        (["curriculum.enabled=1"], "curriculum.enabled", "1"),  # int for bool
        (["curriculum.enabled=yes please"], "curriculum.enabled", "'yes please'"),
        (["teacher=5"], "teacher", "5"),  # int for string
        (["data.max_files=many"], "data.max_files", "'many'"),  # optional int
        (["loss.layer_map=5"], "loss.layer_map", "5"),  # neither str nor list
        (["train=5"], "train", "5"),  # scalar for a mapping
        (["train=[1, 2]"], "train", "[1, 2]"),  # list for a mapping
        (["train.lr.x=1"], "train.lr", "{'x': 1}"),  # mapping for a number
        (["teacher=null"], "teacher", "None"),  # null for a required string
    ],
)
def test_wrong_type_is_refused_naming_the_key(overrides, key, shown):
    message = refused(overrides)
    assert message.startswith(f"{key}:"), message
    assert shown in message


def test_wrong_type_in_a_yaml_file_names_the_nested_key(tmp_path):
    path = write(tmp_path, "deepspeed:\n  zero_stage: two\n")
    with pytest.raises(ConfigError, match=r"^deepspeed\.zero_stage: expected an integer, got 'two'"):
        load_config(path)


def test_section_given_as_a_list_in_yaml_is_refused(tmp_path):
    path = write(tmp_path, "loss:\n  - alpha_ce\n  - alpha_kd\n")
    with pytest.raises(ConfigError, match=r"^loss: expected a mapping"):
        load_config(path)


def test_config_error_is_a_user_error_and_a_value_error():
    with pytest.raises(UserError):
        load_config(None, ["train.max_steps=0"])
    with pytest.raises(ValueError):
        load_config(None, ["train.max_steps=0"])


# ---------------------------------------------------------------------------------------------
# Range rules: each names the dotted key and the bad value, as `key=value: rule`.

RANGE_CASES = [
    # curriculum boundaries: 0 <= p1 <= p2 <= 1
    (["curriculum.phase1_end=-0.1"], "curriculum.phase1_end", -0.1),
    (["curriculum.phase1_end=1.5", "curriculum.phase2_end=1.0"], "curriculum.phase1_end", 1.5),
    (["curriculum.phase2_end=1.2"], "curriculum.phase2_end", 1.2),
    (["curriculum.phase2_end=-0.5", "curriculum.phase1_end=0"], "curriculum.phase2_end", -0.5),
    (["curriculum.phase1_end=0.7", "curriculum.phase2_end=0.5"], "curriculum.phase2_end", 0.5),
    # alphas >= 0 (NaN too)
    (["loss.alpha_ce=-0.1"], "loss.alpha_ce", -0.1),
    (["loss.alpha_kd=-1"], "loss.alpha_kd", -1.0),
    (["loss.alpha_feature=-0.5"], "loss.alpha_feature", -0.5),
    (["loss.alpha_attention=-2"], "loss.alpha_attention", -2.0),
    # temperature, kinds, norms
    (["loss.kd_temperature=0"], "loss.kd_temperature", 0.0),
    (["loss.kd_temperature=-1"], "loss.kd_temperature", -1.0),
    (["loss.kd_kind=kl"], "loss.kd_kind", "kl"),
    (["loss.jsd_beta=1.5"], "loss.jsd_beta", 1.5),
    (["loss.jsd_beta=-0.1"], "loss.jsd_beta", -0.1),
    (["loss.feature_norm=l2"], "loss.feature_norm", "l2"),
    # layer_map forms
    (["loss.layer_map=manual"], "loss.layer_map", "manual"),
    (["loss.layer_map=[]"], "loss.layer_map", []),
    (["loss.layer_map=[[0]]"], "loss.layer_map", [[0]]),
    (["loss.layer_map=[[0, 1, 2]]"], "loss.layer_map", [[0, 1, 2]]),
    (["loss.layer_map=[[0, -1]]"], "loss.layer_map", [[0, -1]]),
    (["loss.layer_map=[[0, 1.5]]"], "loss.layer_map", [[0, 1.5]]),
    (["loss.layer_map=[[true, 1]]"], "loss.layer_map", [[True, 1]]),
    (["loss.layer_map=[0, 1]"], "loss.layer_map", [0, 1]),
    # train.* bounds
    (["train.max_steps=0"], "train.max_steps", 0),
    (["train.micro_batch_size=0"], "train.micro_batch_size", 0),
    (["train.grad_accum=0"], "train.grad_accum", 0),
    (["train.lr=0"], "train.lr", 0.0),
    (["train.lr=-3e-4"], "train.lr", -3e-4),
    (["train.min_lr_ratio=1.5"], "train.min_lr_ratio", 1.5),
    (["train.min_lr_ratio=-0.1"], "train.min_lr_ratio", -0.1),
    (["train.warmup_steps=-1"], "train.warmup_steps", -1),
    (["train.weight_decay=-0.01"], "train.weight_decay", -0.01),
    (["train.grad_clip=-1"], "train.grad_clip", -1.0),
    (["train.log_every=0"], "train.log_every", 0),
    (["train.eval_every=0"], "train.eval_every", 0),
    (["train.eval_batches=0"], "train.eval_batches", 0),
    (["train.checkpoint_every=0"], "train.checkpoint_every", 0),
    (["train.checkpoints_to_keep=0"], "train.checkpoints_to_keep", 0),
    (["train.max_nonfinite_in_a_row=0"], "train.max_nonfinite_in_a_row", 0),
    (["train.debug_every=-1"], "train.debug_every", -1),
    # warm-up must end before training does
    (["train.max_steps=20", "train.warmup_steps=20"], "train.warmup_steps", 20),
    (["train.max_steps=20", "train.warmup_steps=30"], "train.warmup_steps", 30),
    # data and derive
    (["data.vocab_size=100"], "data.vocab_size", 100),
    (["data.seq_len=4"], "data.seq_len", 4),
    (["data.eval_fraction=0"], "data.eval_fraction", 0.0),
    (["data.eval_fraction=0.5"], "data.eval_fraction", 0.5),
    (["data.max_files=0"], "data.max_files", 0),
    (["derive.num_layers=0"], "derive.num_layers", 0),
    (["derive.hidden_size=0"], "derive.hidden_size", 0),
    (["derive.intermediate_size=-1"], "derive.intermediate_size", -1),
    (["derive.num_attention_heads=0"], "derive.num_attention_heads", 0),
    # deepspeed stage / precision / offload rules
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage", 4),
    (["deepspeed.zero_stage=-1"], "deepspeed.zero_stage", -1),
    (["deepspeed.precision=fp8"], "deepspeed.precision", "fp8"),
    (["deepspeed.offload_param=true", "deepspeed.zero_stage=2"], "deepspeed.offload_param", True),
    (["deepspeed.offload_optimizer=true", "deepspeed.zero_stage=0"], "deepspeed.offload_optimizer", True),
    (["deepspeed.precision=fp16"], "deepspeed.precision", "fp16"),  # fp16 on CPU
    (["deepspeed.teacher_zero3=true"], "deepspeed.teacher_zero3", True),
    (["deepspeed.teacher_precision=fp16"], "deepspeed.teacher_precision", "fp16"),
    (["train.attn_implementation=flash"], "train.attn_implementation", "flash"),
    (["train.compile=true", "deepspeed.zero_stage=3"], "train.compile", True),
    # scaling
    (["scaling.num_workers=0"], "scaling.num_workers", 0),
    (["scaling.cpus_per_worker=0"], "scaling.cpus_per_worker", 0.0),
    (["scaling.max_failures=-2"], "scaling.max_failures", -2),
    # models
    (["teacher=' '"], "teacher", " "),
    (["student=''"], "student", ""),
    # teacher none: no teacher-dependent parts, and nothing to derive the student from
    (["teacher=none"], "loss.alpha_kd", 0.7),
    (
        ["teacher=none", "loss.alpha_kd=0", "loss.alpha_feature=0.5", "loss.alpha_attention=0"],
        "loss.alpha_feature",
        0.5,
    ),
    (
        ["teacher=none", "loss.alpha_kd=0", "loss.alpha_feature=0", "loss.alpha_attention=0.25"],
        "loss.alpha_attention",
        0.25,
    ),
    (
        ["teacher=none", "loss.alpha_kd=0", "loss.alpha_feature=0", "loss.alpha_attention=0"],
        "student",
        "derived",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key", "value"), RANGE_CASES, ids=[" ".join(case[0]) for case in RANGE_CASES]
)
def test_range_rule_refused_naming_key_and_value(overrides, key, value):
    message = refused(overrides)
    assert message.startswith(f"{key}={value!r}: "), message


def test_nan_alpha_is_refused():
    assert refused(["loss.alpha_kd=.nan"]).startswith("loss.alpha_kd=nan: must be >= 0")


def test_nan_temperature_is_refused():
    assert refused(["loss.kd_temperature=.nan"]).startswith("loss.kd_temperature=nan")


def test_all_alphas_zero_is_refused():
    message = refused(
        ["loss.alpha_ce=0", "loss.alpha_kd=0", "loss.alpha_feature=0", "loss.alpha_attention=0"]
    )
    assert "loss.alpha_*" in message
    assert "at least one must be > 0" in message
    assert "[0.0, 0.0, 0.0, 0.0]" in message


def test_phase_order_message_names_both_boundaries():
    message = refused(["curriculum.phase1_end=0.7", "curriculum.phase2_end=0.5"])
    assert "curriculum.phase1_end (0.7)" in message


def test_fp16_on_cpu_says_what_to_use_instead():
    message = refused(["deepspeed.precision=fp16"])
    assert "scaling.use_gpu" in message
    assert "bf16" in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["curriculum.phase1_end=0", "curriculum.phase2_end=0"],
        ["curriculum.phase1_end=1", "curriculum.phase2_end=1"],
        ["curriculum.phase1_end=0.4", "curriculum.phase2_end=0.4"],
        ["loss.alpha_ce=0", "loss.alpha_feature=0", "loss.alpha_attention=0"],
        ["loss.kd_kind=jsd", "loss.jsd_beta=0"],
        ["loss.kd_kind=reverse_kl", "loss.jsd_beta=1"],
        ["loss.feature_norm=cosine"],
        ["loss.layer_map=[[0, 1], [1, 3]]"],
        ["train.warmup_steps=0"],
        ["train.max_steps=21", "train.warmup_steps=20"],
        ["train.grad_clip=0", "train.min_lr_ratio=1"],
        ["deepspeed.zero_stage=3", "deepspeed.offload_param=true", "deepspeed.offload_optimizer=true"],
        ["deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"],
        ["deepspeed.zero_stage=0", "deepspeed.precision=bf16"],
        ["deepspeed.precision=fp16", "scaling.use_gpu=true"],
        ["deepspeed.teacher_zero3=true", "scaling.use_gpu=true"],
        ["scaling.max_failures=-1", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5"],
        [
            "teacher=none",
            "student=preset:tiny-llama",
            "loss.alpha_kd=0",
            "loss.alpha_feature=0",
            "loss.alpha_attention=0",
        ],
    ],
    ids=lambda o: " ".join(o),
)
def test_boundary_values_that_are_allowed(overrides):
    load_config(None, overrides)


# ---------------------------------------------------------------------------------------------
# Files


def test_missing_config_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_as_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\nloss: [1, 2\n", name="broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "line" in message


def test_binary_config_file_is_refused_naming_the_file(tmp_path):
    # e.g. `--config model.safetensors` by mistake: a ConfigError, not a UnicodeDecodeError traceback.
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- train\n- loss\n", name="list.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


def test_to_yaml_round_trips_through_load_config(tmp_path):
    config = load_config(
        None,
        [
            "teacher=preset:tiny-gpt2",
            "student=/models/student",
            "train.lr=3e-4",
            "train.max_steps=77",
            "train.warmup_steps=7",
            "loss.layer_map=[[0, 1], [1, 3]]",
            "loss.kd_kind=jsd",
            "loss.jsd_beta=0.25",
            "curriculum.enabled=false",
            "data.max_files=null",
            "data.tokenizer=gpt2",
            "derive.hidden_size=32",
            "deepspeed.zero_stage=3",
            "deepspeed.offload_param=true",
            "scaling.cpus_per_worker=1.5",
        ],
    )
    assert config != Config()
    path = write(tmp_path, config.to_yaml(), name="resolved.yaml")
    again = load_config(path)
    assert again == config
    assert again.to_yaml() == config.to_yaml()


def test_to_yaml_round_trips_tiny_learning_rates(tmp_path):
    # 1e-10 must come back as a float, not as the string "1e-10".
    config = load_config(None, ["train.lr=1e-10", "train.weight_decay=1e-7"])
    again = load_config(write(tmp_path, config.to_yaml()))
    assert again.train.lr == 1e-10
    assert again.train.weight_decay == 1e-7


def test_to_dict_is_plain_data_for_workers():
    data = Config().to_dict()
    assert isinstance(data["train"], dict)
    assert config_from_dict(data) == Config()


# ---------------------------------------------------------------------------------------------
# Every shipped config loads, validates, and says how to run it (a config file describes itself).


def test_configs_exist():
    assert CONFIG_FILES, "configs/*.yaml is empty"


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path):
    config = load_config(path)
    assert isinstance(config, Config)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_header_names_the_command_that_runs_it(path):
    header = _header(path)
    assert header and header[0].startswith("#"), f"{path.name} has no header comment"
    wanted = f"--config configs/{path.name}"
    commands = [line for line in header if "raydistill " in line and wanted in line]
    assert commands, f"{path.name}: header has no `raydistill ... {wanted}` command"


def test_compile_is_a_boolean_accepted_up_to_zero2():
    assert load_config(None, ["train.compile=true", "deepspeed.zero_stage=2"]).train.compile is True
    assert load_config().train.compile is False
    assert "train.compile" in refused(["train.compile=yes please"])


def test_relative_model_paths_become_absolute(tmp_path, monkeypatch):
    # Ray workers and Tune trials start in other directories: a relative local path must not reach
    # them, or transformers reads it as a hub id ("Repo id must be in the form ...").
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["teacher=models/teacher", "student=preset:tiny-llama"])
    assert config.teacher == str(tmp_path / "models" / "teacher")
    assert config.student == "preset:tiny-llama"  # not a path: left as given
    assert load_config(None, ["teacher=org/some-hub-id"]).teacher == "org/some-hub-id"
    # Every config built from a dict (the demo's teacher and distillation configs too).
    built = config_from_dict({"teacher": "models/teacher", "student": "./models/teacher"})
    assert built.teacher == built.student == str(tmp_path / "models" / "teacher")
