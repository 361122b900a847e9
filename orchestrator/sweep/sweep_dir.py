"""The sweep's run dir on disk: created with its config and settings, found again by --resume, and the
trials' values drawn up front (points.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import Config, load_config
from orchestrator.errors import UserError
from orchestrator.sweep.layout import POINTS_FILE, SETTINGS_FILE, TUNE_DIR
from orchestrator.sweep.settings import SweepSettings
from orchestrator.train.run_dir import CONFIG_FILE, prepare_run_dir


def init_sweep_dir(run_dir: Path, base: Config, settings: SweepSettings) -> None:
    """Create the sweep's run dir with config.yaml and sweep.yaml; refuse one holding another run."""
    if (run_dir / TUNE_DIR).exists() or (run_dir / POINTS_FILE).exists():
        raise UserError(
            f"{run_dir} already holds a sweep; continue it with `raydistill sweep --resume {run_dir}`"
        )
    if (run_dir / CONFIG_FILE).exists() and not (run_dir / SETTINGS_FILE).exists():
        raise UserError(f"{run_dir} holds a training run, not a sweep; use another --run-dir")
    prepare_run_dir(run_dir, base)
    (run_dir / SETTINGS_FILE).write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))


def load_sweep_dir(path: Path) -> tuple[Path, Config, SweepSettings]:
    """(run dir, base config, settings) of the sweep at `path` (its run dir or its tune/ dir)."""
    run_dir = path.resolve()
    if run_dir.name == TUNE_DIR and (run_dir.parent / SETTINGS_FILE).exists():
        run_dir = run_dir.parent
    settings_file = run_dir / SETTINGS_FILE
    started = (run_dir / TUNE_DIR).is_dir() or (run_dir / POINTS_FILE).is_file()
    if not settings_file.is_file() or not started:
        raise UserError(f"--resume {path}: no sweep there (expected {SETTINGS_FILE} and {TUNE_DIR}/)")
    settings = SweepSettings.from_dict(yaml.safe_load(settings_file.read_text()) or {})
    return run_dir, load_config(run_dir / CONFIG_FILE), settings


def write_points(run_dir: Path, points: list[dict[str, Any]]) -> None:
    (run_dir / POINTS_FILE).write_text(json.dumps(points, indent=2))


def read_points(run_dir: Path) -> list[dict[str, Any]]:
    """The trials' values as drawn when the sweep started (--resume before Tune had started)."""
    path = run_dir / POINTS_FILE
    return json.loads(path.read_text()) if path.exists() else []
