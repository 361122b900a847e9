"""The data against the models, on the driver before Ray starts: which tokenizer the run uses, and
whether the data's ids and special tokens fit the teacher and student (config.json and tokenizer files
only, never weights).

The anchor model is the teacher when it is pretrained (a directory or hub id), else a pretrained
student: its tokenizer is the run's when `data.tokenizer` is not set, and data it was not trained with
is refused. Presets take the run tokenizer's vocabulary, so a run of presets alone is not checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import ConfigError
from orchestrator.train.model_configs import looks_like_local_path, text_config_of
from workers.presets import preset_name

# Any of these beside config.json means the model directory carries its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SPECIAL_IDS = ("eos", "bos", "pad")


def is_pretrained(spec: str) -> bool:
    """A model directory or hub id (not a preset, `derived` or `none`)."""
    return spec not in ("derived", "none") and preset_name(spec) is None


def has_tokenizer(spec: str) -> bool:
    """Whether a model directory, or a hub id in the local Hugging Face cache, has tokenizer files."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return any((path / name).is_file() for name in TOKENIZER_FILES)
    if looks_like_local_path(spec):
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(spec, name), str) for name in TOKENIZER_FILES)


def anchor_model(config: Config) -> tuple[str, str] | None:
    """(key, spec) of the model whose tokenizer the data must use: a pretrained teacher, else a
    pretrained student; None when both are presets (or derived from one)."""
    for key in ("teacher", "student"):
        spec = getattr(config, key)
        if is_pretrained(spec):
            return key, spec
    return None


def default_tokenizer(config: Config) -> tuple[str, str] | None:
    """(key, spec) of the model whose tokenizer a corpus is tokenised with when `data.tokenizer` is not
    set; None to train a BPE."""
    anchor = anchor_model(config)
    if config.data.tokenizer is None and anchor is not None and has_tokenizer(anchor[1]):
        return anchor
    return None


def _local_or_id(spec: str) -> str:
    """An existing local path made absolute (Ray workers run in other directories), a hub id as is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def run_tokenizer_spec(config: Config, data_dir: Path) -> str:
    """What workers load the run's tokenizer from: the tokenizer the run names (data.tokenizer or the
    anchor model's), not the prepared data's copy; the data's own for a BPE or a prepared dir."""
    from orchestrator.data.prepare import MANIFEST

    if (Path(config.data.source).expanduser() / MANIFEST).is_file():
        return str(data_dir / "tokenizer")
    if config.data.tokenizer is not None:
        return _local_or_id(config.data.tokenizer)
    default = default_tokenizer(config)
    return default[1] if default is not None else str(data_dir / "tokenizer")


# ---------------------------------------------------------------------------------------------
# The checks.


@dataclass
class _DataTokenizer:
    tokenizer: Any  # a transformers tokenizer as loaded (no pad fallback)
    name: str  # how the user named it, for messages
    max_id: int  # the largest id the data holds (or could hold, for a corpus not yet tokenised)
    from_anchor: bool = False  # the anchor model's own tokenizer (nothing to compare)


def load_tokenizer_for(spec: str, key: str) -> Any:
    """The tokenizer at `spec` as loaded (no pad fallback); ConfigError prefixed with `key` if it cannot be."""
    from orchestrator.data.tokenizer_training import load_pretrained
    from orchestrator.errors import UserError

    try:
        return load_pretrained(spec)
    except UserError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _prepared_max_id(source: Path, manifest: dict[str, Any]) -> int:
    """The manifest's max id, or the shards' column max when an older manifest lacks it."""
    if isinstance(manifest.get("max_token_id"), int):
        return manifest["max_token_id"]
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from orchestrator.data.shards import COLUMN, SPLITS

    best = -1
    for split in SPLITS:
        for shard in sorted((source / split).glob("*.parquet")):
            column = pq.read_table(shard, columns=[COLUMN]).column(COLUMN)
            value = pc.max(pc.list_flatten(column)).as_py()
            best = max(best, -1 if value is None else int(value))
    return best


def _data_tokenizer(config: Config, anchor: tuple[str, str]) -> _DataTokenizer:
    from orchestrator.data.prepare import MANIFEST, read_manifest
    from workers.tokenizer_identity import tokenizer_identity

    data = config.data
    source = Path(data.source).expanduser()
    if (source / MANIFEST).is_file():
        tokenizer = load_tokenizer_for(str(source / "tokenizer"), "data.source")
        name = f"data.source={data.source!r}"
        if data.tokenizer is not None:
            named = load_tokenizer_for(data.tokenizer, "data.tokenizer")
            if tokenizer_identity(named) != tokenizer_identity(tokenizer):
                raise ConfigError(
                    f"data.tokenizer={data.tokenizer!r}: data.source {str(source)!r} was tokenised by "
                    f"another tokenizer ({tokenizer_difference(named, tokenizer)}); prepare the data with it"
                )
        return _DataTokenizer(tokenizer, name, _prepared_max_id(source, read_manifest(source)))
    if data.tokenizer is not None:
        tokenizer = load_tokenizer_for(data.tokenizer, "data.tokenizer")
        name = f"data.tokenizer={data.tokenizer!r}"
    else:
        key, spec = anchor
        if not has_tokenizer(spec):
            raise ConfigError(
                f"{key}={spec!r} has no tokenizer files and data.tokenizer is not set: a BPE trained on the "
                "corpus would give ids the model was not trained on; set data.tokenizer to its tokenizer"
            )
        tokenizer = load_tokenizer_for(spec, key)
        return _DataTokenizer(tokenizer, f"{key} {spec!r}'s tokenizer", len(tokenizer) - 1, from_anchor=True)
    return _DataTokenizer(tokenizer, name, len(tokenizer) - 1)


def tokenizer_difference(a: Any, b: Any) -> str:
    """What differs between two tokenizers, briefly: the special tokens by name, or the part."""
    from workers.tokenizer_identity import identity_fields

    fa, fb = identity_fields(a), identity_fields(b)
    parts = []
    for name, value in fa["special"].items():
        other = fb["special"].get(name)
        if value == other:
            continue
        if name == "additional":
            parts.append("additional special tokens")
        else:
            parts.append(f"{name} {value and value[0]!r} vs {other and other[0]!r}")
    labels = {
        "backend": "vocabulary/merges/normaliser",
        "chat_template": "chat template",
        "flags": "id flags",
    }
    parts += [label for field, label in labels.items() if fa[field] != fb[field]]
    return "; ".join(parts) or "identity differs"


def _check_identity(data_tok: _DataTokenizer, anchor: tuple[str, str]) -> None:
    from workers.tokenizer_identity import tokenizer_identity

    key, spec = anchor
    if data_tok.from_anchor or not has_tokenizer(spec):
        return  # nothing to compare with: the data the user named is the run's
    own = load_tokenizer_for(spec, key)
    if tokenizer_identity(own) != tokenizer_identity(data_tok.tokenizer):
        raise ConfigError(
            f"{key}={spec!r} is pretrained with another tokenizer than the data's ({data_tok.name}): "
            f"{tokenizer_difference(own, data_tok.tokenizer)}; tokenise the data with the {key}'s tokenizer"
        )


def _pretrained_models(config: Config) -> list[tuple[str, str, Any]]:
    """(key, spec, text config) of each model whose config.json applies: a derived student has its
    teacher's."""
    models = []
    for key in ("teacher", "student"):
        spec = getattr(config, key)
        if is_pretrained(spec):
            models.append((key, spec, text_config_of(spec)))
    return models


def _check_ids_fit(data_tok: _DataTokenizer, models: list[tuple[str, str, Any]]) -> None:
    """Every pretrained model's embedding has a row for each id of the data and of the run's tokenizer
    (the data's): the workers read logits over len(tokenizer) columns (workers/models.py
    `check_vocabularies`). More rows are fine: padding, which the loss leaves out."""
    tokens = len(data_tok.tokenizer)
    for key, spec, text in models:
        size = int(text.vocab_size)
        if data_tok.max_id >= size:
            raise ConfigError(
                f"{key}={spec!r}: its embedding has {size} rows (config.json vocab_size) but the data "
                f"({data_tok.name}) holds ids up to {data_tok.max_id}"
            )
        if tokens > size:
            raise ConfigError(
                f"{key}={spec!r}: its embedding has {size} rows (config.json vocab_size) but the data's "
                f"tokenizer ({data_tok.name}) has {tokens} tokens; every token id needs a row"
            )


def _check_special_ids(data_tok: _DataTokenizer, models: list[tuple[str, str, Any]], anchor_key: str) -> None:
    """The anchor model's config.json special ids must be the data tokenizer's (its predictions are
    the targets). The other model, a pretrained student, is trained and exported with the run's
    tokenizer, so a disagreement (a base student of an Instruct teacher: another eos) is said in one
    line, not refused."""
    tokenizer = data_tok.tokenizer
    for key, spec, text in models:
        for name in SPECIAL_IDS:
            configured = getattr(text, f"{name}_token_id", None)
            own = getattr(tokenizer, f"{name}_token_id", None)
            if configured is None or own is None:
                continue  # Qwen's tokenizer has no bos; many configs no pad: nothing to disagree
            allowed = configured if isinstance(configured, list | tuple) else [configured]
            if own in allowed:
                continue
            token = getattr(tokenizer, f"{name}_token", None)
            problem = (
                f"{key}={spec!r}: config.json {name}_token_id={configured!r}, but the data's tokenizer "
                f"({data_tok.name}) has {name} {token!r} = {own}"
            )
            if key == anchor_key:
                raise ConfigError(problem)
            print(f"raydistill: {problem}; the {key} learns and is exported with the data's", flush=True)


def check_data_fits_models(config: Config) -> None:
    """The data's tokenizer is the anchor model's, its ids fit every pretrained model's embedding, and
    their config.json special ids agree with it. Raises `ConfigError` naming the key and model."""
    anchor = anchor_model(config)
    if anchor is None:
        return
    data_tok = _data_tokenizer(config, anchor)
    _check_identity(data_tok, anchor)
    models = _pretrained_models(config)
    _check_ids_fit(data_tok, models)
    _check_special_ids(data_tok, models, anchor[0])
