"""workers.tune_decision: a sweep trial's workers wait at each eval for Tune's decision."""

import threading
import time

from workers.tune_decision import decided_step, wait_for_decision, write_decision


def test_decision_file_round_trips_the_last_step(tmp_path):
    path = tmp_path / "run.decided"
    assert decided_step(path) == -1  # no decision yet
    write_decision(path, 10)
    write_decision(path, 40)
    assert decided_step(path) == 40
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_workers_go_on_once_the_step_is_decided(tmp_path):
    decision, stop = tmp_path / "run.decided", tmp_path / "run.stop"
    write_decision(decision, 10)
    assert wait_for_decision(str(decision), str(stop), 10) is True
    assert wait_for_decision(str(decision), str(stop), 5) is True  # an earlier eval: long decided


def test_workers_stop_when_the_stop_file_appears_instead(tmp_path):
    decision, stop = tmp_path / "run.decided", tmp_path / "run.stop"
    write_decision(decision, 10)
    stop.touch()
    assert wait_for_decision(str(decision), str(stop), 20) is False


def test_workers_block_until_the_driver_decides(tmp_path):
    decision, stop = tmp_path / "run.decided", tmp_path / "run.stop"
    write_decision(decision, 10)
    threading.Timer(0.3, write_decision, (decision, 20)).start()
    start = time.monotonic()
    assert wait_for_decision(str(decision), str(stop), 20, poll_s=0.01) is True
    assert time.monotonic() - start >= 0.25  # it did not go on with the step-10 decision
