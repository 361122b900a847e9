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
# Below this raw value (nats for the KL parts) a part counts as matched, not as drowned by its weight.
MATCHED_RAW = 0.05

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


def _parts_on(record: dict[str, Any]) -> list[str]:
    return [c for c in COMPONENTS if record.get(f"loss/{c}/weight", 0) > 0]


def _matched(record: dict[str, Any]) -> list[str]:
    """Parts switched on whose raw loss is already near zero: student and teacher agree there."""
    return [c for c in _parts_on(record) if 0 <= record.get(f"loss/{c}/raw", math.inf) < MATCHED_RAW]


def _part_dominance(record: dict[str, Any]) -> tuple[float, str, str] | None:
    """(largest scaled part / second largest, largest's name, second's name) over the parts that are on
    and still have something to learn. A part already near zero is small because there is nothing left
    to match, not because its weight is too low: raising that weight, which this check would
    suggest, changes nothing."""
    left_out = set(_matched(record))
    if record.get("phase") == 2:
        # Ramping in by design (workers/curriculum.py): judged at full weight, in phase 3.
        left_out.add("feature")
    parts = sorted(
        ((record.get(f"loss/{c}/scaled", 0.0), c) for c in _parts_on(record) if c not in left_out),
        reverse=True,
    )
    if len(parts) < 2:
        return None
    (top, top_name), (second, second_name) = parts[0], parts[1]
    if second <= 0:
        return (math.inf if top > 0 else 1.0), top_name, second_name
    return top / second, top_name, second_name


def _matched_note(records: Sequence[dict[str, Any]]) -> str:
    """'; kd near 0 all run (...)' for the parts near zero at every step they were on ('' if none)."""
    on = {c for r in records for c in _parts_on(r)}
    always = [
        c for c in COMPONENTS if c in on and all(c in _matched(r) for r in records if c in _parts_on(r))
    ]
    if not always:
        return ""
    return (
        f"; {', '.join(always)} near 0 all run (raw < {MATCHED_RAW:g}: teacher and student already agree "
        "there, e.g. an untrained teacher's near-uniform logits; left out of this check)"
    )


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
    note = _matched_note(records)
    if dominance:
        worst_d, at, top, second = max(dominance, key=lambda x: x[0])
        verdicts.append(
            (
                f"no scaled part more than {MAX_PART_DOMINANCE:g}x the others",
                worst_d <= MAX_PART_DOMINANCE,
                f"worst {fmt(worst_d)}x ({top} over {second}, step {at}){note}",
            )
        )
    else:
        verdicts.append(
            (
                f"no scaled part more than {MAX_PART_DOMINANCE:g}x the others",
                True,
                f"one part left to compare{note}" if note else "one part only (CE)",
            )
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
