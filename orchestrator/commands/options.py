"""Command-line options several sub-commands share."""

from __future__ import annotations

import argparse


def add_override_option(
    parser: argparse.ArgumentParser,
    what: str,
    example: str,
    flag: str = "--set",
    dest: str = "overrides",
) -> None:
    """A repeatable `--set KEY=VALUE` (or `flag`) collected into `dest`, applied after the YAML file."""
    parser.add_argument(
        flag,
        dest=dest,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what}, e.g. {flag} {example} (repeatable)",
    )


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: Ray's console as Ray sets it (its INFO logs, progress bars, library warnings)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own console output (INFO logs, progress bars, warnings) instead of quieting it",
    )
