"""The health verdict: four checks a person can act on, each pass or fail with the figure it was judged
on: eval/train ratio under 2x, no non-finite steps, no scaled part more than 10x the others, perplexity
falling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from orchestrator.report.format import fmt
from workers.curriculum import COMPONENTS

MAX_EVAL_TRAIN_RATIO = 2.0
MAX_PART_DOMINANCE = 10.0

Verdict = tuple[str, bool, str]  # (check, passed, figure)


def eval_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "eval/ppl" in r]


def mean_tokens_per_s(records: Sequence[dict[str, Any]]) -> float | None:
    """Tokens per second over the whole run: every logging window holds the same number of steps, so
    the overall rate is the harmonic mean of the windows' rates (total tokens / total time)."""
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s", 0) > 0]
    if not rates:
        return None
    return len(rates) / sum(1.0 / rate for rate in rates)


def _part_dominance(record: dict[str, Any]) -> tuple[float, str, str] | None:
    """(largest scaled part / second largest, largest's name, second's name) over the parts that are on."""
    parts = sorted(
        (
            (record.get(f"loss/{c}/scaled", 0.0), c)
            for c in COMPONENTS
            if record.get(f"loss/{c}/weight", 0) > 0
        ),
        reverse=True,
    )
    if len(parts) < 2:
        return None
    (top, top_name), (second, second_name) = parts[0], parts[1]
    if second <= 0:
        return (math.inf if top > 0 else 1.0), top_name, second_name
    return top / second, top_name, second_name


def health_verdict(records: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The run's four health checks, each `(name, passed, figure_text)`."""
    verdicts: list[Verdict] = []
    evals = eval_records(records)

    ratios = [
        (r["eval_train_ratio"], r["step"])
        for r in evals
        if math.isfinite(r.get("eval_train_ratio", math.nan))
    ]
    if ratios:
        worst, at = max(ratios)
        last = ratios[-1][0]
        verdicts.append(
            (
                f"eval/train ratio under {MAX_EVAL_TRAIN_RATIO:g}x",
                worst < MAX_EVAL_TRAIN_RATIO,
                f"worst {fmt(worst)}x at step {at}, last {fmt(last)}x",
            )
        )
    else:
        verdicts.append((f"eval/train ratio under {MAX_EVAL_TRAIN_RATIO:g}x", False, "no eval with a ratio"))

    skipped = max((int(r.get("nonfinite_skipped", 0)) for r in records), default=0)
    verdicts.append(("no non-finite steps", skipped == 0, f"{skipped} step(s) skipped"))

    dominance = []
    for r in records:
        found = _part_dominance(r)
        if found is not None:
            dominance.append((found[0], r["step"], found[1], found[2]))
    if dominance:
        worst_d, at, top, second = max(dominance, key=lambda x: x[0])
        verdicts.append(
            (
                f"no scaled part more than {MAX_PART_DOMINANCE:g}x the others",
                worst_d <= MAX_PART_DOMINANCE,
                f"worst {fmt(worst_d)}x ({top} over {second}, step {at})",
            )
        )
    else:
        verdicts.append(
            (f"no scaled part more than {MAX_PART_DOMINANCE:g}x the others", True, "one part only (CE)")
        )

    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        verdicts.append(
            (
                "perplexity falling",
                last["eval/ppl"] < first["eval/ppl"],
                f"eval ppl {fmt(first['eval/ppl'])} (step {first['step']}) -> "
                f"{fmt(last['eval/ppl'])} (step {last['step']})",
            )
        )
    else:
        trained = [r for r in records if "loss/ce/raw" in r and r.get("loss/ce/weight", 0) > 0]
        if len(trained) >= 2:
            a, b = math.exp(min(trained[0]["loss/ce/raw"], 50)), math.exp(min(trained[-1]["loss/ce/raw"], 50))
            verdicts.append(
                ("perplexity falling", b < a, f"train ppl {fmt(a)} -> {fmt(b)} (fewer than 2 evals)")
            )
        else:
            verdicts.append(("perplexity falling", False, "fewer than 2 evals and 2 logged steps"))
    return verdicts


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    return [f"- **{'PASS' if ok else 'FAIL'}** {name}: {figure}" for name, ok, figure in verdicts]
