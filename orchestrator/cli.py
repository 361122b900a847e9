"""`raydistill` command line: one sub-command per module, each exposing `add_arguments` and `run`.

Bad input (`UserError`) prints one line, `raydistill: error: ...`, and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from orchestrator.errors import Interrupted, RunFailed, UserError

# sub-command -> (module, one-line help). Modules import heavy libraries lazily inside `run`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("orchestrator.commands.train", "distil a student on Ray Train workers with DeepSpeed"),
    "prepare-data": (
        "orchestrator.commands.prepare_data",
        "tokenise a corpus into train/eval Parquet shards",
    ),
    "demo": ("orchestrator.commands.demo", "the end-to-end demo: data, teacher, distillation, report"),
    "sweep": ("orchestrator.commands.sweep", "search the curriculum with Ray Tune"),
    "plan": ("orchestrator.commands.plan", "per-GPU memory plan for a teacher/student pair"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydistill",
        description="Distil causal language models on Ray Train + DeepSpeed, with a Tune-searched curriculum.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"raydistill: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"raydistill: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"raydistill: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("raydistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
