"""A sweep trial's workers wait at each eval until Tune has decided on it.

Tune's scheduler judges a trial on its eval results. Its decision (go on, or stop / pause) reaches
the trial's driver only after Train's controller has relayed the eval record (orchestrator.sweep.trial_driver);
without a wait, the workers trained on meanwhile, and a trial stopped at an ASHA rung ran up to
`train.log_every` steps past it: compute the sweep spent for nothing. So after reporting an eval
the workers block until the driver writes that step to the decision file (go on) or the stop file
appears (stop or pause). Both files sit in the trial's dir, which multi-node sweeps keep on shared
storage like the rest of the run dir.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POLL_S = 0.02


def write_decision(path: str | Path, step: int) -> None:
    """Driver side: the trial goes on past `step` (atomic: a reader never sees a partial number)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(step))
    os.replace(tmp, path)


def decided_step(path: str | Path) -> int:
    """The last step the driver let the trial go on from, or -1 before any."""
    try:
        return int(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return -1


def wait_for_decision(decision_file: str, stop_file: str, step: int, poll_s: float = POLL_S) -> bool:
    """Worker side: block until Tune has decided on the eval at `step`. True = go on, False = stop."""
    while True:
        if os.path.exists(stop_file):
            return False
        if decided_step(decision_file) >= step:
            return True
        time.sleep(poll_s)
