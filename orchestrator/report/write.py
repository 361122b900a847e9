"""A run's report, from its `metrics.jsonl`: `report.md` (summary, per-phase table, health verdict)
and `report.png` (loss parts raw and weighted, curriculum weights, eval/train ratio, lr).

    write_report(run_dir, summary) -> (report.md, report.png)

The parts live beside this module: `health` (the verdict), `markdown` (report.md), `plots` (report.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.report.markdown import REPORT_MD, render_markdown
from orchestrator.report.plots import REPORT_PNG, write_plot
from orchestrator.train.telemetry import read_metrics


def write_report(run_dir: str | Path, summary: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write `report.md` and `report.png` into `run_dir` from its metrics.jsonl."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    config_path = run_dir / "config.yaml"
    run_config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    png = write_plot(records, run_dir / REPORT_PNG, run_config)
    md = run_dir / REPORT_MD
    md.write_text(render_markdown(records, summary, png.name))
    return md, png
