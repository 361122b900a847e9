"""A failed run's workers, told in one line: the error each worker raised (workers/worker_errors.py
`WorkerFailed`: classified, with its traceback) is found inside what `trainer.fit` raises, its
traceback written to `<run dir>/logs/worker_error.log`, and the run ends with the line and the log's
path: exit 2 when the user's input is at fault, exit 1 otherwise.

`NoRetryOnUserError` runs on Ray Train's controller: a user error fails the run at once instead of
being retried `scaling.max_failures` times (the same model fails to load on every attempt).
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ray.train import ControllerError, UserCallback

from orchestrator.errors import UserError, root_cause
from workers.worker_errors import WorkerFailed

LOG_NAME = "logs/worker_error.log"
# Where Ray keeps a worker's error in what it raises: the worker group's per-rank errors, the
# controller's own failure (a callback that stopped the run), the user exception it wraps.
_NESTED = ("worker_failures", "controller_failure", "_base_exc", "__cause__", "__context__")


class WorkerInputError(UserError):
    """A worker found the user's input at fault (a model that does not load, out of memory...)."""


def worker_failures(exc: BaseException) -> list[WorkerFailed]:
    """Every `WorkerFailed` inside `exc` (Ray's wrappers unpacked), in rank order, each rank once."""
    found: dict[int, WorkerFailed] = {}
    pending, seen = [exc], set()
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, WorkerFailed):
            found.setdefault(item.rank, item)
            continue
        for name in _NESTED:
            nested = getattr(item, name, None)
            pending.extend(nested.values() if isinstance(nested, dict) else [nested])
    return [found[rank] for rank in sorted(found)]


def is_user_failure(worker_exceptions) -> bool:
    """Whether any of a worker group's errors is the user's input at fault."""
    return any(failure.user for error in worker_exceptions for failure in worker_failures(error))


class NoRetryOnUserError(UserCallback):
    """Fails the run at the first user error. Ray Train's default failure policy retries a worker
    group's errors up to `max_failures` times but never a ControllerError (unless it wraps a worker
    group start-up failure); one raised from this hook ends the run, and, being already a
    TrainingFailedError, without the controller logging a traceback of its own."""

    def after_exception(self, run_context, worker_exceptions) -> None:
        failures = [f for e in worker_exceptions.values() for f in worker_failures(e) if f.user]
        if failures:
            raise ControllerError(failures[0])


def write_log(run_dir: Path, exc: BaseException, failures: list[WorkerFailed]) -> Path:
    """The failing workers' tracebacks (or, with none, what `fit` raised) in the run dir's log."""
    path = run_dir / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if failures:
        text = "\n".join(f"=== rank {f.rank} ===\n{f.details}" for f in failures)
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path.write_text(text)
    return path


def failure_message(exc: BaseException, run_dir: Path) -> tuple[bool, str]:
    """(the user's input is at fault, the one line to print) for `trainer.fit`'s `exc`; writes the
    log the line names."""
    failures = worker_failures(exc)
    log = write_log(run_dir, exc, failures)
    user = [f for f in failures if f.user]
    if user:
        return True, f"{user[0].summary} (full log: {log})"
    summary = failures[0].summary if failures else root_cause(exc)
    return False, f"training failed: {summary} (full log: {log})"
