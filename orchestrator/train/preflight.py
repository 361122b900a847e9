"""Checks of a run's inputs that read only small files (model config.json, manifest.json, Parquet
footers, a directory listing), made on the driver before the run dir is written or Ray starts.

A refused run then leaves nothing behind: a new run dir is not created, so the corrected command can
reuse the same --run-dir (a run dir holding the refused config would be "another run"). Each message
names the config key and the value or file at fault.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Config
from orchestrator.errors import UserError
from orchestrator.train.data_models import check_data_fits_models
from orchestrator.train.model_checks import check_attention_kernel, check_derivable
from orchestrator.train.model_configs import (
    PRESET_MAX_POSITIONS,
    looks_like_local_path,
    max_positions_of,
)
from orchestrator.train.shared_tokenizer import check_vocabularies
from workers.presets import PRESETS, preset_name

MODEL_KEYS = ("teacher", "student")
NOT_PATHS = ("derived", "none")


def model_spec_problem(spec: str) -> str | None:
    """Why `spec` (a teacher or student value) cannot name a model, or None. Reads no weights and
    never asks the Hugging Face Hub: a missing local path fails here at once, not after the hub
    client's retries (~25 s without a network)."""
    if spec in NOT_PATHS:
        return None
    name = preset_name(spec)
    if name is not None:
        return None if name in PRESETS else f"unknown preset {name!r}; known: {sorted(PRESETS)}"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{path} holds no config.json (not a Hugging Face model directory)"
        return None
    if path.exists():
        return f"{path} is a file; give the model's directory (holding config.json)"
    if looks_like_local_path(spec):
        return (
            f"no such model directory {path.absolute()} (a local path: not looked up on the Hugging Face Hub)"
        )
    return None  # a hub id: transformers resolves it (from its cache when offline)


def check_model_specs(config: Config) -> None:
    for key in MODEL_KEYS:
        spec = getattr(config, key)
        problem = model_spec_problem(spec)
        if problem is not None:
            raise UserError(f"{key}={spec!r}: {problem}")


def check_seq_len_fits(config: Config) -> None:
    """`data.seq_len` against each real model's max positions (presets are built with the trainer's
    preset limit), named by key: past it, position embeddings index out of range inside a worker."""
    seq_len = config.data.seq_len
    real = False
    for key in MODEL_KEYS:
        spec = getattr(config, key)
        limit = max_positions_of(spec)
        if limit is None:
            continue
        real = True
        if seq_len > limit:
            raise UserError(
                f"data.seq_len={seq_len}: larger than the max positions of {key} {spec!r} ({limit})"
            )
    if not real and seq_len > PRESET_MAX_POSITIONS:
        raise UserError(
            f"data.seq_len={seq_len}: larger than the preset models' max positions {PRESET_MAX_POSITIONS}"
        )


def check_data_source(config: Config) -> None:
    """A prepared dir: its manifest, seq_len and shards. A source: its files listed (Parquet footers
    read), its first record's fields and `data.loss_on` checked, for `data.eval_source` too."""
    from orchestrator.data.prepare import MANIFEST, check_sources, ensure_prepared

    source = config.data.source
    path = Path(source).expanduser()
    if (path / MANIFEST).is_file():
        # A prepared dir is only read (manifest, seq_len, shard footers), never written, by this.
        ensure_prepared(config.data)
        return
    try:
        check_sources(config.data)
    except UserError:
        if path.is_dir() and (path / "train").is_dir():  # a prepared dir missing its manifest
            raise UserError(f"data.source={source!r}: {path} has a train/ dir but no {MANIFEST}") from None
        raise


def preflight(config: Config) -> None:
    """Every cheap input check, in the order a user would fix them. Raises `UserError`."""
    check_model_specs(config)
    check_vocabularies(config)
    check_derivable(config)
    check_attention_kernel(config)
    check_seq_len_fits(config)
    check_data_source(config)
    check_data_fits_models(config)
