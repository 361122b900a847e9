"""The record a worker reports at a logged step: the step's metrics, throughput since the last logged
step, and at an eval the eval metrics and `eval_train_ratio`."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from workers.curriculum import COMPONENTS
from workers.step import eval_pass

if TYPE_CHECKING:
    from workers.step import StepResult


class TrainRawAverager:
    """Mean raw value per component over the steps since the last eval, recombined with the current
    weights, so `eval_train_ratio` compares eval and train totals at the same weights."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for c in COMPONENTS:
            if metrics.get(f"loss/{c}/weight", 0.0) > 0:
                self.sums[c] = self.sums.get(c, 0.0) + metrics[f"loss/{c}/raw"]
                self.counts[c] = self.counts.get(c, 0) + 1

    def total_at(self, weights: dict[str, float]) -> float:
        return sum(
            w * self.sums[c] / self.counts[c] for c, w in weights.items() if w > 0 and self.counts.get(c)
        )

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


class ThroughputWindow:
    """Tokens trained since the last logged step, the time they took, and how many were label tokens."""

    def __init__(self) -> None:
        self.reset()

    def add(self, tokens: int, trained: int) -> None:
        self.tokens += tokens
        self.trained += trained

    def tokens_per_s(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def trained_share(self) -> float:
        """Label tokens over attended tokens: 1.0 for packed text, the loss mask's share for chat data."""
        return self.trained / self.tokens if self.tokens > 0 else 0.0

    def reset(self) -> None:
        self.tokens, self.trained, self.start = 0, 0, time.perf_counter()


def step_record(
    step: int,
    max_steps: int,
    progress: float,
    phase: int,
    lr: float,
    tokens_per_s: float,
    tokens_trained: int,
    trained_share: float,
    nonfinite_skipped: int,
    result: StepResult,
    static: dict[str, int],
    stop_at: int,
) -> dict[str, Any]:
    """The record of step `step` (1-based), trained at `progress`; a prefix run (`stop_at` before
    `max_steps`) also names where it stops, for the progress line's eta. `tokens_trained`: label tokens
    of every applied step so far, all workers; `trained_share`: label tokens over attended tokens since
    the last logged step."""
    record: dict[str, Any] = {
        "step": step,
        "max_steps": max_steps,
        "progress": progress,
        "phase": phase,
        "lr": lr,
        "tokens_per_s": tokens_per_s,
        "tokens_trained": tokens_trained,
        "trained_share": trained_share,
        "nonfinite_skipped": nonfinite_skipped,
        **result.metrics,
        **static,
    }
    if result.skipped:
        record["nonfinite_components"] = ",".join(result.nonfinite)
    if stop_at < max_steps:
        record["stop_step"] = stop_at
    return record


def add_eval(record: dict[str, Any], engine, teacher, evals, progress: float, loss, averager) -> None:
    """Run the eval pass into `record`, with the ratio of its total to the train total since the last
    eval (both at the weights of `progress`); start a new train average."""
    eval_metrics = eval_pass(engine, teacher, evals, progress)
    record.update(eval_metrics)
    train_total = averager.total_at(loss.weights(progress))
    record["eval_train_ratio"] = eval_metrics["eval/total"] / train_total if train_total > 0 else math.nan
    averager.reset()
