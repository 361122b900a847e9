"""The names of a sweep's files and directories and of the metrics trials report: one leaf module (it
imports nothing from orchestrator), so every part of the sweep can name them without importing each
other.

Layout under the sweep's run dir:
  config.yaml, sweep.yaml      base config and sweep settings (read again by --resume)
  points.json                  every trial's sampled values, drawn up front
  prefixes.json, prefixes/     phase-1 prefixes shared by several trials, trained once
                               (orchestrator.sweep.shared_prefix)
  tune/                        the Tune experiment (trial results, Tune checkpoints, state)
  trials/<trial_id>/           metrics.jsonl, the trial's Train run(s) `run`, `run_1`, ...
  sweep_results.csv, best_config.yaml
"""

from __future__ import annotations

EVAL_METRIC = "eval/ppl"
MODE = "min"
CONFIG_PREFIX = "config/"
START_STEP = "start_step"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
SETTINGS_FILE = "sweep.yaml"
POINTS_FILE = "points.json"  # every trial's sampled values, drawn up front
