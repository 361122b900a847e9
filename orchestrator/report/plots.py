"""report.png: loss parts raw and weighted, curriculum weights, eval/train ratio, lr. matplotlib is
imported lazily with the Agg backend (no display)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.report.health import MAX_EVAL_TRAIN_RATIO, eval_records
from workers.curriculum import COMPONENTS, schedule_from_config

REPORT_PNG = "report.png"
PHASE_COLOURS = {1: "#f2f2f2", 2: "#e3ecf7", 3: "#e6f3e6"}


def _phase_spans(records: Sequence[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(phase, first step, last step) spans, from the logged phase of each record."""
    spans: list[tuple[int, float, float]] = []
    previous_step = 0.0
    for r in records:
        if spans and spans[-1][0] == r["phase"]:
            spans[-1] = (r["phase"], spans[-1][1], r["step"])
        else:
            spans.append((r["phase"], previous_step, r["step"]))
        previous_step = r["step"]
    return spans


def schedule_of(run_config: dict[str, Any] | None):
    """The run's curriculum schedule from its resolved config (config.yaml), or None."""
    if not run_config:
        return None
    return schedule_from_config(run_config["curriculum"], run_config["loss"])


def _schedule_spans(schedule, max_steps: int) -> list[tuple[int, float, float]]:
    """Exact phase spans in steps: step s trains at progress (s - 1) / max_steps."""
    spans: list[tuple[int, float, float]] = []
    for step in range(1, max_steps + 1):
        phase = schedule.phase((step - 1) / max_steps)
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], step)
        else:
            spans.append((phase, step - 1, step))
    return spans


def write_plot(
    records: Sequence[dict[str, Any]], path: Path, run_config: dict[str, Any] | None = None
) -> Path:
    import matplotlib.pyplot as plt

    fig = build_figure(records, run_config)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def build_figure(records: Sequence[dict[str, Any]], run_config: dict[str, Any] | None = None):
    """The report's matplotlib Figure: six panels, 2 rows x 3 (the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    (raw_ax, scaled_ax, weight_ax), (ratio_ax, lr_ax, ppl_ax) = axes
    trained = [r for r in records if "loss/total" in r]
    steps = [r["step"] for r in trained]
    schedule = schedule_of(run_config)
    max_steps = int(run_config["train"]["max_steps"]) if run_config else 0
    spans = _schedule_spans(schedule, max_steps) if schedule is not None else _phase_spans(records)
    colours = {"ce": "tab:blue", "kd": "tab:orange", "feature": "tab:green", "attention": "tab:red"}

    def shade(ax, label: bool = False) -> None:
        for phase, start, end in spans:
            ax.axvspan(start, end, color=PHASE_COLOURS.get(phase, "#ffffff"), zorder=0, lw=0)
            if label:
                ax.text(
                    (start + end) / 2,
                    1.0,
                    f"phase {phase}",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="dimgrey",
                )
        for _, start, _ in spans[1:]:
            ax.axvline(start, color="grey", ls=":", lw=1)

    for ax, kind, title in (
        (raw_ax, "raw", "loss parts, raw"),
        (scaled_ax, "scaled", "loss parts, weighted"),
    ):
        shade(ax)
        for c in COMPONENTS:
            points = [(r["step"], r[f"loss/{c}/{kind}"]) for r in trained if r.get(f"loss/{c}/weight", 0) > 0]
            if points:
                ax.plot(*zip(*points), label=c, color=colours[c], marker=".", ms=3)
        if kind == "scaled" and trained:
            ax.plot(steps, [r["loss/total"] for r in trained], label="total", color="black", lw=1.5)
        ax.set_yscale("log")
        ax.set_title(title + " (phases shaded)")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)

    shade(weight_ax, label=True)
    if schedule is not None:
        # Every step's weights from the run's own schedule (the logged ones are every log_every steps).
        grid = list(range(1, max_steps + 1))
        per_step = [schedule.weights((step - 1) / max_steps) for step in grid]
        for c in COMPONENTS:
            if any(w[c] > 0 for w in per_step):
                weight_ax.plot(grid, [w[c] for w in per_step], label=c, color=colours[c])
    else:
        for c in COMPONENTS:
            if any(r.get(f"loss/{c}/weight", 0) > 0 for r in records):
                weight_ax.plot(
                    [r["step"] for r in records],
                    [r.get(f"loss/{c}/weight", 0.0) for r in records],
                    label=c,
                    color=colours[c],
                    drawstyle="steps-post",
                )
    weight_ax.set_title("curriculum weights", pad=14)
    weight_ax.set_xlabel("step")
    weight_ax.legend(fontsize=8)

    evals = eval_records(records)
    shade(ratio_ax)
    ratio_points = [
        (r["step"], r["eval_train_ratio"])
        for r in evals
        if math.isfinite(r.get("eval_train_ratio", math.nan))
    ]
    if ratio_points:
        ratio_ax.plot(*zip(*ratio_points), marker="o", color="tab:purple", label="eval / train")
    ratio_ax.axhline(MAX_EVAL_TRAIN_RATIO, color="tab:red", ls="--", label=f"{MAX_EVAL_TRAIN_RATIO:g}x limit")
    ratio_ax.set_ylim(bottom=0)
    ratio_ax.set_title("eval/train loss ratio (same weights)")
    ratio_ax.set_xlabel("step")
    ratio_ax.legend(fontsize=8)

    lr_points = [(r["step"], r["lr"]) for r in records if r.get("lr", 0) > 0]
    if lr_points:
        lr_ax.plot(*zip(*lr_points), color="tab:brown")
        lr_ax.set_yscale("log")
    lr_ax.set_title("learning rate")
    lr_ax.set_xlabel("step")

    shade(ppl_ax)
    if evals:
        ppl_ax.plot([r["step"] for r in evals], [r["eval/ppl"] for r in evals], marker="o", color="black")
        ppl_ax.set_yscale("log")
    ppl_ax.set_title("in-run eval perplexity (evenly spaced eval sequences)")
    ppl_ax.set_xlabel("step")
    return fig
