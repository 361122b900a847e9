"""The typed run config: one dataclass per concern, composed into `Config`.

Resolution order: dataclass defaults, then the YAML file, then `--set dotted.key=value` overrides.
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the dotted key, before
any Ray worker starts. Workers receive `config.to_dict()` (plain data: they never import this module).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from orchestrator.data.records import LOSS_ON
from orchestrator.dotted import set_dotted, split_key
from orchestrator.errors import ConfigError

# The loss's own typed sections, with their rules (workers/ never imports orchestrator/; that module
# imports no torch, so CLI start-up stays fast). Attention kernels of both models, each resolved for
# its own class: "auto" = flash-attention 2 (GPU, installed, half precision) or sdpa where the model
# supports it, else eager; eager while the attention loss needs maps (workers/attention.py).
from workers.attention import ATTN_IMPLEMENTATIONS
from workers.loss_config import CurriculumConfig, FieldError, LossConfig

# "auto": bf16 where the worker's hardware computes it natively, else fp32 (workers/precision.py).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# The frozen teacher only runs forward: "auto" = bf16 where the student trains in bf16 or the
# worker's hardware computes bf16 natively (its forward then costs about half), else fp32.
TEACHER_PRECISIONS = ("auto", "fp32", "bf16")


# How `data.source` is read (orchestrator/data/sources.py); "auto" decides from the source itself.
DATA_FORMATS = ("auto", "text", "jsonl", "json", "parquet", "hf")


@dataclass
class DataConfig:
    # A prepared dir (holding manifest.json from `raydistill prepare-data`) or a corpus: a directory,
    # a file, a glob, "stdlib" (the Python standard library's .py files), JSONL / JSON / Parquet files,
    # or a Hugging Face dataset dir written by `datasets`' save_to_disk.
    source: str = "stdlib"
    # auto, text (one document per file), jsonl, json, parquet or hf (see DATA_FORMATS).
    format: str = "auto"
    # The field (or column) holding a text record's document; chat records have "messages",
    # prompt/completion records "prompt" and "completion".
    text_field: str = "text"
    # Which tokens are trained: auto (assistant turns for chat, the completion for pairs, all for
    # text), all, assistant or completion.
    loss_on: str = "auto"
    # A separate eval set (same forms as `source`); null holds out `eval_fraction` of `source`.
    eval_source: str | None = None
    # Tokenizer path or Hugging Face id; null trains a byte-level BPE of `vocab_size` on the corpus.
    tokenizer: str | None = None
    vocab_size: int = 4096
    seq_len: int = 128
    eval_fraction: float = 0.05
    # Cap on corpus files read (null = all); keeps smoke runs small.
    max_files: int | None = None
    # Where prepared data is cached when `source` is a corpus (keyed by a hash of these settings).
    cache_dir: str = "runs/cache/data"
    seed: int = 0


@dataclass
class DeriveConfig:
    """How `student: derived` is built from the teacher (DistilBERT style)."""

    num_layers: int = 2
    # null keeps the teacher's width (and copies its layers' weights); a smaller width starts fresh.
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None


@dataclass
class TrainConfig:
    max_steps: int = 200
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 100
    checkpoints_to_keep: int = 2
    seed: int = 0
    # Consecutive non-finite steps tolerated before the run stops with an error (a NaN must never
    # silently kill a run; skipped steps never reach the optimizer).
    max_nonfinite_in_a_row: int = 10
    # >0 prints the full loss ledger every N steps.
    debug_every: int = 0
    # auto, eager, sdpa or flash_attention_2 (see ATTN_IMPLEMENTATIONS).
    attn_implementation: str = "auto"
    # torch.compile the model being trained (its forward and backward; the loss stays eager): faster
    # steps after a slow first compile (BENCHMARKS.md, "Compiling the teacher's pre-training").
    compile: bool = False


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    precision: str = "fp32"  # fp32, bf16, fp16 (GPU only) or auto (bf16 where the hardware has it natively)
    offload_optimizer: bool = False
    offload_param: bool = False
    # The frozen teacher's weights and forward: auto, fp32 or bf16 (see TEACHER_PRECISIONS).
    teacher_precision: str = "auto"
    # On GPU clusters the frozen teacher may be sharded as a ZeRO-3 inference engine.
    teacher_zero3: bool = False


@dataclass
class ScalingSection:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0


@dataclass
class Config:
    # Hugging Face id, local path, "preset:<name>" (see workers.presets), or "none" to train the
    # student on hard labels alone (the CE-only baseline, or pre-training a teacher).
    teacher: str = "preset:tiny-llama"
    # Same forms, or "derived": fewer (optionally narrower) layers initialised from the teacher.
    student: str = "derived"
    data: DataConfig = field(default_factory=DataConfig)
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building a Config from plain data, with type checks that name the dotted key.


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} has the wrong type")
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(annotation))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "3e-4" as a string; users write learning rates that way.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if annotation is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    # Field order, so the first error reported does not depend on set iteration.
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key '{dotted}'")
    kwargs = {}
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], dotted)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        # The worker-side sections check their own rules; name the field by its dotted key.
        raise ConfigError(exc.with_prefix(f"{prefix}." if prefix else "")) from None


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        split_key(key)
    except ValueError:
        raise ConfigError(f"--set {text!r}: empty key") from None
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({exc.problem})") from None
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`data` (unchanged) with each `--set` applied in order; a section given as a value merges."""
    data = copy.deepcopy(data)
    for text in overrides:
        set_dotted(data, *parse_override(text), create=True)
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a UTF-8 text file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def config_from_dict(data: dict) -> Config:
    config = _build(Config, data, "")
    validate(config)
    return _absolute_model_paths(config)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- `--set` overrides, validated once."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def _absolute_model_paths(config: Config) -> Config:
    """A teacher or student given as a path relative to where the command runs, made absolute: Ray
    workers and Tune trials run in other directories, where transformers would take it for a hub id."""
    for key in ("teacher", "student"):
        path = Path(getattr(config, key)).expanduser()
        if path.is_dir():
            config = dataclasses.replace(config, **{key: str(path.resolve())})
    return config


# ---------------------------------------------------------------------------------------------
# Range checks. Each names the dotted key and the bad value.


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r}: {rule}")


def validate(config: Config) -> None:
    """The rules of the orchestrator's own sections and those across sections; the loss and curriculum
    sections checked theirs when built (workers/loss_config.py)."""
    loss, t, d, ds, s = config.loss, config.train, config.data, config.deepspeed, config.scaling
    _require(bool(config.teacher.strip()), "teacher", config.teacher, "must name a model")
    _require(bool(config.student.strip()), "student", config.student, "must name a model or be 'derived'")

    if config.teacher == "none":
        for key in ("alpha_kd", "alpha_feature", "alpha_attention"):
            value = getattr(loss, key)
            _require(value == 0, f"loss.{key}", value, "must be 0 when teacher is 'none'")
        _require(
            config.student != "derived",
            "student",
            config.student,
            "cannot be 'derived' when teacher is 'none'",
        )

    _require(t.max_steps >= 1, "train.max_steps", t.max_steps, "must be >= 1")
    _require(t.micro_batch_size >= 1, "train.micro_batch_size", t.micro_batch_size, "must be >= 1")
    _require(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
    _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _require(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", t.min_lr_ratio, "must be in [0, 1]")
    _require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _require(
        t.warmup_steps < t.max_steps,
        "train.warmup_steps",
        t.warmup_steps,
        f"must be < train.max_steps ({t.max_steps})",
    )
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 disables clipping)")
    _require(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    _require(t.eval_every >= 1, "train.eval_every", t.eval_every, "must be >= 1")
    _require(t.eval_batches >= 1, "train.eval_batches", t.eval_batches, "must be >= 1")
    _require(t.checkpoint_every >= 1, "train.checkpoint_every", t.checkpoint_every, "must be >= 1")
    _require(t.checkpoints_to_keep >= 1, "train.checkpoints_to_keep", t.checkpoints_to_keep, "must be >= 1")
    _require(
        t.max_nonfinite_in_a_row >= 1,
        "train.max_nonfinite_in_a_row",
        t.max_nonfinite_in_a_row,
        "must be >= 1",
    )
    _require(t.debug_every >= 0, "train.debug_every", t.debug_every, "must be >= 0 (0 disables)")
    _require(
        t.attn_implementation in ATTN_IMPLEMENTATIONS,
        "train.attn_implementation",
        t.attn_implementation,
        f"must be one of {list(ATTN_IMPLEMENTATIONS)}",
    )
    _require(
        not t.compile or config.deepspeed.zero_stage < 3,
        "train.compile",
        t.compile,
        "needs deepspeed.zero_stage 0-2 (ZeRO-3 gathers parameters in module hooks, which raydistill "
        "does not compile through)",
    )

    _require(
        d.vocab_size >= 256 + 3, "data.vocab_size", d.vocab_size, "must be >= 259 (bytes + special tokens)"
    )
    _require(d.seq_len >= 8, "data.seq_len", d.seq_len, "must be >= 8")
    _require(0.0 < d.eval_fraction < 0.5, "data.eval_fraction", d.eval_fraction, "must be in (0, 0.5)")
    _require(d.max_files is None or d.max_files >= 1, "data.max_files", d.max_files, "must be >= 1 or null")
    _require(d.format in DATA_FORMATS, "data.format", d.format, f"must be one of {list(DATA_FORMATS)}")
    _require(bool(d.text_field.strip()), "data.text_field", d.text_field, "must name a field")
    _require(d.loss_on in LOSS_ON, "data.loss_on", d.loss_on, f"must be one of {list(LOSS_ON)}")
    _require(
        d.eval_source is None or bool(d.eval_source.strip()),
        "data.eval_source",
        d.eval_source,
        "must name a source or be null",
    )

    dv = config.derive
    _require(dv.num_layers >= 1, "derive.num_layers", dv.num_layers, "must be >= 1")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
        value = getattr(dv, key)
        _require(value is None or value >= 1, f"derive.{key}", value, "must be >= 1 or null")

    _require(ds.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", ds.zero_stage, "must be 0, 1, 2 or 3")
    _require(
        ds.precision in PRECISIONS, "deepspeed.precision", ds.precision, f"must be one of {list(PRECISIONS)}"
    )
    _require(
        ds.teacher_precision in TEACHER_PRECISIONS,
        "deepspeed.teacher_precision",
        ds.teacher_precision,
        f"must be one of {list(TEACHER_PRECISIONS)}",
    )
    _require(
        not ds.offload_param or ds.zero_stage == 3,
        "deepspeed.offload_param",
        ds.offload_param,
        "needs deepspeed.zero_stage: 3",
    )
    _require(
        not ds.offload_optimizer or ds.zero_stage >= 1,
        "deepspeed.offload_optimizer",
        ds.offload_optimizer,
        "needs deepspeed.zero_stage >= 1",
    )
    _require(
        not (ds.precision == "fp16" and not s.use_gpu),
        "deepspeed.precision",
        ds.precision,
        "fp16 needs scaling.use_gpu: true (use fp32 or bf16 on CPU)",
    )
    _require(
        not ds.teacher_zero3 or s.use_gpu,
        "deepspeed.teacher_zero3",
        ds.teacher_zero3,
        "needs scaling.use_gpu: true",
    )

    _require(s.num_workers >= 1, "scaling.num_workers", s.num_workers, "must be >= 1")
    _require(s.cpus_per_worker > 0, "scaling.cpus_per_worker", s.cpus_per_worker, "must be > 0")
    _require(
        s.max_failures >= -1, "scaling.max_failures", s.max_failures, "must be >= 0 (or -1 for unlimited)"
    )
