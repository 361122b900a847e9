"""The `raydistill` CLI: bad input is one line on stderr and exit code 2, never a traceback.

Every case here fails before Ray or data preparation starts, so the subprocesses are quick.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.train import ray_session, trainer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAYDISTILL = BIN / "raydistill"
TINY = ROOT / "configs" / "tiny.yaml"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("raydistill: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def test_missing_config_file_via_python_m(tmp_path):
    result = run([sys.executable, "-m", "orchestrator", "train", "--config", "missing.yaml"], tmp_path)
    assert_one_line_error(result, "config file not found", "missing.yaml")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_via_the_console_script(tmp_path):
    assert RAYDISTILL.exists(), f"{RAYDISTILL} is not installed (pip install -e .)"
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  max_steps: 10\n  warmup_stpes: 2\n")
    result = run([str(RAYDISTILL), "train", "--config", str(config)], tmp_path)
    assert_one_line_error(result, "unknown config key 'train.warmup_stpes'")
    assert not (tmp_path / "runs").exists()


def test_set_without_equals_is_refused(tmp_path):
    result = run([str(RAYDISTILL), "train", "--config", str(TINY), "--set", "train.lr"], tmp_path)
    assert_one_line_error(result, "--set 'train.lr'", "dotted.key=value")


def test_out_of_range_set_names_key_and_value(tmp_path):
    result = run(
        [str(RAYDISTILL), "train", "--config", str(TINY), "--set", "loss.kd_temperature=0"], tmp_path
    )
    assert_one_line_error(result, "loss.kd_temperature=0.0", "must be > 0")


def test_invalid_yaml_names_the_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train: [1, 2\n")
    result = run([str(RAYDISTILL), "train", "--config", str(config)], tmp_path)
    assert_one_line_error(result, str(config), "not valid YAML")


def test_binary_config_file_is_one_line(tmp_path):
    config = tmp_path / "weights.safetensors"
    config.write_bytes(b"\xff\xfe\x00\x81binary")
    result = run([str(RAYDISTILL), "train", "--config", str(config)], tmp_path)
    assert_one_line_error(result, str(config))


def test_run_dir_holding_a_foreign_config_yaml_is_one_line(tmp_path):
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("- not\n- ours\n")
    result = run([str(RAYDISTILL), "train", "--config", str(TINY), "--run-dir", str(run_dir)], tmp_path)
    assert_one_line_error(result, "not a raydistill config")
    assert (run_dir / "config.yaml").read_text() == "- not\n- ours\n"


def _other_run_dir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A run dir holding another run of tiny.yaml (a different train.seed) and a marker file."""
    other = load_config(TINY)
    assert other.train.seed != 1234
    other.train.seed = 1234
    run_dir = tmp_path / "other-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(other.to_yaml())
    (run_dir / "marker").write_text("do not touch")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    return run_dir, before


def test_run_dir_of_another_run_is_refused_untouched_and_fast(tmp_path):
    run_dir, before = _other_run_dir(tmp_path)
    started = time.monotonic()
    result = run(
        [str(RAYDISTILL), "train", "--config", str(TINY), "--run-dir", str(run_dir)],
        tmp_path,
    )
    elapsed = time.monotonic() - started
    assert_one_line_error(result, str(run_dir), "train.seed")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    # Refused before Ray starts: a local Ray start alone takes far longer than this.
    assert elapsed < 30, f"took {elapsed:.1f}s: did Ray start?"


def test_run_dir_refusal_comes_before_data_preparation_and_ray(tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("reached data preparation / Ray start before the run dir check")

    monkeypatch.setattr(trainer, "prepare_run", must_not_run)
    monkeypatch.setattr(ray_session, "ensure_ray", must_not_run)
    run_dir, before = _other_run_dir(tmp_path)
    code = main(["train", "--config", str(TINY), "--run-dir", str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.seed" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_bad_config_refused_in_process_before_the_run_dir_is_made(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", str(TINY), "--set", "train.max_steps=0"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "raydistill: error: train.max_steps=0: must be >= 1"
    assert not (tmp_path / "runs").exists()


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
