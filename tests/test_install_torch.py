"""scripts/install_torch.sh: never pulls a CUDA torch onto a machine without a GPU.

A stub stands in for the interpreter (not for torch): it answers `-c "import torch"` as told and
records the arguments of `-m pip ...` into a file instead of installing anything. PATH holds only a
directory we control, so whether `nvidia-smi` exists is up to each test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_torch.sh"
BASH = shutil.which("bash") or "/bin/bash"
SH = shutil.which("sh") or "/bin/sh"


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def stub_python(tmp_path: Path, torch_importable: bool, pip_exit: int = 0) -> tuple[Path, Path]:
    log = tmp_path / "pip-args.txt"
    stub = executable(
        tmp_path / "stub-python",
        f"""#!{SH}
if [ "$1" = "-c" ]; then
    [ {int(torch_importable)} = 1 ] || exit 1
    case "$2" in *print*) echo 9.9.9+stub ;; esac
    exit 0
fi
echo "$@" >> "{log}"
exit {pip_exit}
""",
    )
    return stub, log


def run_script(python: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PATH",)}
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return subprocess.run(
        [BASH, str(SCRIPT), str(python)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


def test_project_interpreter_with_torch_is_left_alone():
    env = dict(os.environ)
    result = subprocess.run(
        [BASH, str(SCRIPT), sys.executable], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("torch ")
    assert lines[0].endswith("already installed: leaving it alone")


def test_stub_with_torch_is_left_alone(tmp_path, bin_dir):
    stub, log = stub_python(tmp_path, torch_importable=True)
    executable(bin_dir / "nvidia-smi", f"#!{SH}\nexit 0\n")  # even with a GPU present
    result = run_script(stub, [bin_dir])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch 9.9.9+stub already installed: leaving it alone"
    assert not log.exists()  # pip never called


def test_without_nvidia_smi_the_cpu_wheel_is_pinned(tmp_path, bin_dir):
    stub, log = stub_python(tmp_path, torch_importable=False)
    result = run_script(stub, [bin_dir])
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU: installing the CPU wheel torch==2.13.0" in result.stdout
    assert log.read_text().splitlines() == ["-m pip install -q torch==2.13.0"]


def test_nvidia_smi_without_a_gpu_still_pins_the_cpu_wheel(tmp_path, bin_dir):
    # nvidia-smi present (a driver package) but `-L` fails: no usable GPU.
    stub, log = stub_python(tmp_path, torch_importable=False)
    executable(bin_dir / "nvidia-smi", f"#!{SH}\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    result = run_script(stub, [bin_dir])
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["-m pip install -q torch==2.13.0"]


def test_with_a_gpu_torch_comes_from_the_index_unpinned(tmp_path, bin_dir):
    stub, log = stub_python(tmp_path, torch_importable=False)
    executable(bin_dir / "nvidia-smi", f'#!{SH}\n[ "$1" = "-L" ] && echo "GPU 0: A10G"\nexit 0\n')
    result = run_script(stub, [bin_dir])
    assert result.returncode == 0, result.stderr
    assert "CUDA GPU found" in result.stdout
    assert log.read_text().splitlines() == ["-m pip install -q torch"]


def test_a_failed_install_fails_the_script(tmp_path, bin_dir):
    stub, log = stub_python(tmp_path, torch_importable=False, pip_exit=1)
    result = run_script(stub, [bin_dir])
    assert result.returncode != 0
    assert log.read_text().splitlines() == ["-m pip install -q torch==2.13.0"]
