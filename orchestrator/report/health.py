"""The health verdict: checks a person can act on, each pass or fail with the figure it was judged on
and, for a failure, the rule that fired: eval/train ratio under 2x, no non-finite steps, no scaled
part more than 10x the others, the logged total equal to the sum of its parts, the lr logged above 0,
perplexity falling."""

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
# The 10x rule is for a part too LARGE (DESIGN.md: a raw hidden-state MSE of 4,000 swamping a KD of 2),
# not for a teacher-matching KL left small because the student caught up: kd and attention are the
# student's excess cross-entropy over the teacher's, CE also holds the data's own entropy, so a KL
# under a tenth of CE's raw value means the student is close to the teacher there (a derived student).
CAUGHT_UP_PARTS = ("kd", "attention")
# |total - sum of scaled parts| allowed, relative to the total (float32 sums over a few parts).
LEDGER_TOLERANCE = 1e-4

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


def _caught_up(record: dict[str, Any]) -> list[str]:
    """KL parts on, not near zero, but under a tenth of CE's raw value (see CAUGHT_UP_PARTS)."""
    if "ce" not in _parts_on(record):
        return []
    limit = record.get("loss/ce/raw", 0.0) / MAX_PART_DOMINANCE
    matched = _matched(record)
    return [
        c
        for c in CAUGHT_UP_PARTS
        if c in _parts_on(record) and c not in matched and record.get(f"loss/{c}/raw", math.inf) < limit
    ]


def _part_dominance(record: dict[str, Any]) -> tuple[float, str, str] | None:
    """(largest scaled part / second largest, largest's name, second's name) over the parts that are on
    and still have something to learn. A part already near zero is small because there is nothing left
    to match, not because its weight is too low: raising that weight, which this check would
    suggest, changes nothing."""
    left_out = set(_matched(record)) | set(_caught_up(record))
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


def _caught_up_note(records: Sequence[dict[str, Any]]) -> str:
    """'; kd under a tenth of CE at N steps (...)' when the caught-up rule left a part out ('' if none)."""
    steps = {c: sum(c in _caught_up(r) for r in records) for c in CAUGHT_UP_PARTS}
    shown = [f"{c} at {n} step(s)" for c, n in steps.items() if n]
    if not shown:
        return ""
    return (
        f"; under a tenth of CE's raw value, left out: {', '.join(shown)} (the student close to the "
        "teacher there, not a weight imbalance)"
    )


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
    """The run's health checks, each `(name, passed, figure_text)`."""
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
    note = _matched_note(records) + _caught_up_note(records)
    if dominance:
        worst_d, at, top, second = max(dominance, key=lambda x: x[0])
        passed = worst_d <= MAX_PART_DOMINANCE
        rule = "" if passed else f": {top} drowns {second} (weights or units; rescale one of them)"
        verdicts.append(
            (
                f"no scaled part more than {MAX_PART_DOMINANCE:g}x the others",
                passed,
                f"worst {fmt(worst_d)}x ({top} over {second}, step {at}){rule}{note}",
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

    verdicts.append(_ledger_verdict(records))
    verdicts.append(_lr_verdict(records))

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


def _ledger_gaps(records: Sequence[dict[str, Any]]) -> list[tuple[float, int, str, float, float]]:
    """(relative gap, step, prefix, total, sum of scaled parts) for each train and eval ledger logged."""
    gaps = []
    for r in records:
        for prefix in ("loss", "eval"):
            total = r.get(f"{prefix}/total")
            parts = [r[f"{prefix}/{c}/scaled"] for c in COMPONENTS if f"{prefix}/{c}/scaled" in r]
            if total is None or not parts or not math.isfinite(total):
                continue
            summed = math.fsum(parts)
            gaps.append((abs(total - summed) / max(1.0, abs(total)), r["step"], prefix, total, summed))
    return gaps


def _ledger_verdict(records: Sequence[dict[str, Any]]) -> Verdict:
    """Invariant 1 of DESIGN.md, as logged: each total is the sum of its scaled parts."""
    name = "logged total = sum of scaled parts"
    gaps = _ledger_gaps(records)
    if not gaps:
        return name, True, "no ledger logged"
    gap, step, prefix, total, summed = max(gaps)
    if gap <= LEDGER_TOLERANCE:
        return name, True, f"{len(gaps)} ledger(s), worst gap {gap:.1e} of the total"
    label = "eval" if prefix == "eval" else "train"
    return name, False, f"{label} total {fmt(total)} but parts sum to {fmt(summed)} at step {step}"


def _lr_verdict(records: Sequence[dict[str, Any]]) -> Verdict:
    """A logged lr of 0 before the last step: the optimizer did not step, or a warm-up lr was rounded
    to 0 on its way to the log (the last step may end a cosine at min_lr_ratio 0)."""
    name = "lr logged above 0"
    zero = [r["step"] for r in records[:-1] if "lr" in r and not r["lr"] > 0]
    if zero:
        return name, False, f"lr 0 at step(s) {', '.join(map(str, zero[:5]))}"
    lrs = [r["lr"] for r in records if "lr" in r]
    return name, True, f"min {min(lrs):.2e}" if lrs else "no lr logged"


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    return [f"- **{'PASS' if ok else 'FAIL'}** {name}: {figure}" for name, ok, figure in verdicts]
