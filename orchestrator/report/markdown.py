"""report.md: the run's summary, a per-phase table and the health verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.report.format import count, duration, fmt
from orchestrator.report.health import health_verdict, verdict_lines
from orchestrator.report.plots import REPORT_PNG
from workers.curriculum import COMPONENTS

REPORT_MD = "report.md"


def phase_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase: the steps it covered, mean raw and scaled part over its logged steps, last eval."""
    rows: list[dict[str, Any]] = []
    for phase in sorted({r["phase"] for r in records}):
        rs = [r for r in records if r["phase"] == phase and "loss/total" in r]
        if not rs:
            continue
        evals = [r for r in rs if "eval/ppl" in r]
        row: dict[str, Any] = {
            "phase": phase,
            "first_step": rs[0]["step"],
            "last_step": rs[-1]["step"],
            "total": sum(r["loss/total"] for r in rs) / len(rs),
            "eval_ppl": evals[-1]["eval/ppl"] if evals else None,
            "eval_train_ratio": evals[-1].get("eval_train_ratio") if evals else None,
        }
        for c in COMPONENTS:
            row[f"{c}/raw"] = sum(r.get(f"loss/{c}/raw", 0.0) for r in rs) / len(rs)
            row[f"{c}/scaled"] = sum(r.get(f"loss/{c}/scaled", 0.0) for r in rs) / len(rs)
            row[f"{c}/weight"] = rs[-1].get(f"loss/{c}/weight", 0.0)
        rows.append(row)
    return rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    ratio = None
    if summary.get("teacher_params") and summary.get("student_params"):
        ratio = summary["teacher_params"] / summary["student_params"]
    rows = [
        (
            "teacher",
            f"{count(summary.get('teacher_params'))} params, eval ppl {fmt(summary.get('teacher_ppl'))}",
        ),
        (
            "student",
            f"{count(summary.get('student_params'))} params"
            + (f" ({ratio:.1f}x smaller)" if ratio else "")
            + f", eval ppl {fmt(summary.get('student_ppl'))}",
        ),
    ]
    if summary.get("baseline_ppl") is not None:
        rows.append(("CE-only student", f"eval ppl {fmt(summary['baseline_ppl'])}"))
    rate = summary.get("tokens_per_s")
    rows.append(
        ("distillation throughput", "n/a" if rate is None else f"{rate:,.0f} tokens/s (training steps only)")
    )
    rows.append(("wall time", duration(summary.get("wall_s"))))
    for key, label in (("teacher_train_s", "  teacher pre-training"), ("distill_s", "  distillation")):
        if summary.get(key) is not None:
            rows.append((label, duration(summary[key])))
    return rows


def summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table for the console."""
    rows = summary_rows(summary)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def render_markdown(
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any] | None = None,
    png_name: str | None = REPORT_PNG,
) -> str:
    lines = ["# raydistill run report", ""]
    if summary:
        lines += ["## Summary", ""]
        lines.append(_markdown_table(["", "value"], summary_rows(summary)))
        if summary.get("eval_sequences"):
            lines += [
                "",
                f"Perplexities: teacher and student measured the same way, on the same "
                f"{summary['eval_sequences']} evenly spaced sequences of the eval split "
                f"({summary.get('eval_tokens', 0):,} tokens).",
            ]
        lines.append("")
    if records:
        last = records[-1]
        lines += [f"Steps: {last['step']} of {last.get('max_steps', last['step'])}.", ""]
    lines += ["## Per phase", ""]
    rows = []
    for row in phase_rows(records):
        parts = ", ".join(
            f"{c} {fmt(row[f'{c}/raw'])} x {fmt(row[f'{c}/weight'])} = {fmt(row[f'{c}/scaled'])}"
            for c in COMPONENTS
            if row[f"{c}/weight"] > 0 or row[f"{c}/scaled"] > 0
        )
        rows.append(
            [
                str(row["phase"]),
                f"{row['first_step']}-{row['last_step']}",
                parts or "-",
                fmt(row["total"]),
                fmt(row["eval_ppl"]),
                fmt(row["eval_train_ratio"]),
            ]
        )
    header = [
        "phase",
        "steps",
        "mean raw x weight (at phase end) = mean scaled",
        "mean total",
        "in-run eval ppl",
        "eval/train",
    ]
    lines += [_markdown_table(header, rows) if rows else "(no logged steps)", ""]
    lines += [
        "In-run eval (this table, the plots and the verdict) reads `train.eval_batches` batches of "
        "evenly spaced sequences of each worker's eval shard, the same ones at every eval; the summary's "
        "perplexities cover evenly spaced sequences of the whole eval split with the exported model.",
        "",
    ]
    if png_name:
        lines += [f"![loss parts, curriculum weights, eval/train ratio, lr]({png_name})", ""]
    lines += ["## Health verdict", ""]
    lines += verdict_lines(health_verdict(records))
    return "\n".join(lines) + "\n"
