"""A transformers 4.x install the export tests run beside the project's transformers 5, without touching
the project's pins: pip installs it once into a cache directory keyed by version, and a subprocess of
the project's python puts that directory first on PYTHONPATH so 4.x shadows 5.x (torch, numpy and the
other small dependencies still come from the project's venv)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# The last 4.x release; huggingface_hub and tokenizers in the ranges it declares (the venv's are 5.x's,
# newer than 4.x accepts). Its other requirements are satisfied by the venv, hence --no-deps.
TRANSFORMERS4 = "4.57.6"
PACKAGES = [f"transformers=={TRANSFORMERS4}", "huggingface_hub>=0.34,<1.0", "tokenizers>=0.22,<=0.23.0"]
CACHE = Path(os.environ.get("RAYDISTILL_CACHE", Path.home() / ".cache" / "raydistill")) / "transformers4"


class RegistryUnreachable(RuntimeError):
    """pip cannot list transformers 4.x from any registry it is configured for."""


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def ensure_transformers4() -> Path:
    """The cache directory holding transformers 4.x, installed on first use (renamed into place only
    once complete, so an interrupted install is never reused)."""
    target = CACHE / TRANSFORMERS4
    if (target / "transformers").is_dir():
        return target
    index = _pip("index", "versions", "transformers")
    if index.returncode != 0 or TRANSFORMERS4 not in index.stdout:
        raise RegistryUnreachable(
            f"pip cannot offer transformers {TRANSFORMERS4}: {(index.stderr or index.stdout).strip()[-300:]}"
        )
    partial = CACHE / f"{TRANSFORMERS4}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    install = _pip("install", "-q", "--no-deps", "--target", str(partial), *PACKAGES)
    if install.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"pip install {' '.join(PACKAGES)} failed:\n{install.stderr[-2000:]}")
    try:
        partial.rename(target)
    except OSError:  # another process installed it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def run_with_transformers4(script: Path, *args: str) -> subprocess.CompletedProcess:
    """`script` run by the project's python with transformers 4.x shadowing 5.x, offline."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ensure_transformers4()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300
    )
