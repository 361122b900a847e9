"""Ctrl-C (SIGINT) or SIGTERM during `raydistill train`: checkpoint at the end of the step, then stop.

The first signal writes a request file into the run dir; every worker checks it after each step, and
all ranks together save a checkpoint of the step just finished, report it and leave. The driver then
exits with 128 + the signal's number (130, 143) and says which step to resume from: rerunning the same
command continues from that checkpoint, so an interrupt loses no step. A second signal stops at once,
keeping the last checkpoint Ray registered.

Ray Train's `fit()` registers its own SIGINT handler when called in the main thread; that one aborts
the workers without a checkpoint and exits with code 1 and no message. So `fit()` runs in a thread of
its own here, where Ray leaves the signal handlers alone (as it does inside Tune).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.errors import Interrupted

REQUEST_FILE = "interrupt.request"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class GracefulInterrupt:
    """Signal handling for one run: install with `with`, then `call(fit)`."""

    def __init__(self, run_dir: Path):
        self.request_file = Path(run_dir) / REQUEST_FILE
        self.signum: int | None = None
        self._fitting = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def __enter__(self) -> GracefulInterrupt:
        # A request left by an earlier interrupted driver must not stop this run at its first step.
        self.request_file.unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self.request_file.unlink(missing_ok=True)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self._fitting:
            raise Interrupted(f"stopped by {name} before training started", 128 + signum)
        if self.requested:
            raise Interrupted(
                f"stopped at once by a second {name}; the last checkpoint Ray registered is kept",
                128 + signum,
            )
        self.signum = signum
        self.request_file.write_text(f"{name}\n")
        print(
            f"raydistill: {name} received: saving a checkpoint at the end of this step, then stopping "
            f"(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` in a thread of its own; the main thread waits in short joins so handlers run at once."""
        if not self._previous:  # not the main thread: no handlers of ours, Ray's own apply
            return fn()
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as exc:  # handed to the main thread, raised there
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="raydistill-fit", daemon=True)
        self._fitting = True
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
        finally:
            self._fitting = False
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
