"""Build DeepSpeed's shared-memory comm op once, at set-up, instead of in the first training run.

On CPU, `deepspeed.initialize` JIT-compiles this op with g++ (~45 s cold, then cached under
TORCH_EXTENSIONS_DIR, ~/.cache/torch_extensions by default). Building it here moves that pause out
of the first `raydistill train` / `make demo`. Where the op does not apply (a GPU accelerator, or an
incompatible system) nothing is built and set-up goes on: DeepSpeed then decides at run time.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as raydistill's CPU workers run (WORKER_ENV)
    try:
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            print("deepspeed: no shared-memory comm op to build on this machine")
            return 0
        start = time.perf_counter()
        builder.load(verbose=False)
        print(f"deepspeed: {builder.absolute_name()} ready ({time.perf_counter() - start:.0f} s)")
    except Exception as exc:  # set-up must not fail on an optional pre-build: the run builds it itself
        print(f"deepspeed: comm op not pre-built ({type(exc).__name__}: {exc}); the first run builds it")
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
