"""`raydistill prepare-data`: a source -> tokenizer + train/eval Parquet shards + manifest.json.

    raydistill prepare-data --corpus stdlib --out data/stdlib --train-tokenizer 4096 --seq-len 128
    raydistill prepare-data --corpus chats.jsonl --tokenizer <teacher> --out data/chat --loss-on assistant

The work is done by orchestrator.data.prepare, on Ray Data: the command starts (or joins) Ray as
`raydistill train` does, once the cheap checks have passed.
"""

from __future__ import annotations

import argparse
import dataclasses

from orchestrator.config import DATA_FORMATS, DataConfig
from orchestrator.data.prepare import ROWS_PER_SHARD, prepare
from orchestrator.data.records import LOSS_ON
from orchestrator.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DataConfig()
    parser.add_argument(
        "--corpus",
        required=True,
        metavar="PATH|stdlib",
        help="a directory (text files below it), a file, a glob, 'stdlib' (the Python standard library), "
        "JSONL / JSON / Parquet files, or a dir written by datasets' save_to_disk",
    )
    parser.add_argument(
        "--format", default=defaults.format, choices=DATA_FORMATS, help="how to read --corpus (%(default)s)"
    )
    parser.add_argument(
        "--text-field", default=defaults.text_field, help="the field holding a text record (%(default)s)"
    )
    parser.add_argument(
        "--loss-on",
        default=defaults.loss_on,
        choices=LOSS_ON,
        help="trained tokens: auto = assistant turns (chat), the completion (pairs), all (text)",
    )
    parser.add_argument(
        "--eval-source",
        default=None,
        metavar="PATH",
        help="a separate eval set (default: hold out --eval-fraction)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output dir (new, empty, or a matching earlier output)"
    )
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="PATH_OR_ID", help="use this tokenizer (e.g. the teacher's)")
    tok.add_argument(
        "--train-tokenizer",
        type=int,
        metavar="VOCAB_SIZE",
        help=f"train a byte-level BPE of this vocab size on the corpus (the default, {defaults.vocab_size})",
    )
    parser.add_argument(
        "--seq-len", type=int, default=defaults.seq_len, help="tokens per sequence (%(default)s)"
    )
    parser.add_argument(
        "--eval-fraction",
        type=float,
        default=defaults.eval_fraction,
        help="share of tokens held out for eval, by whole documents (%(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="split / file-sample seed (%(default)s)"
    )
    parser.add_argument("--max-files", type=int, default=None, help="read at most N files (a seeded sample)")
    parser.add_argument(
        "--max-positions",
        type=int,
        default=None,
        help="the model's max positions: refuse a longer --seq-len (read from --tokenizer's config.json if absent)",
    )
    parser.add_argument(
        "--rows-per-shard",
        type=int,
        default=ROWS_PER_SHARD,
        help="max sequences per Parquet shard (%(default)s)",
    )


def _check_flags(args: argparse.Namespace) -> None:
    from orchestrator.data.tokenizer_training import MIN_VOCAB_SIZE

    if args.train_tokenizer is not None and args.train_tokenizer < MIN_VOCAB_SIZE:
        raise UserError(
            f"--train-tokenizer {args.train_tokenizer}: must be >= {MIN_VOCAB_SIZE} (bytes + special tokens)"
        )
    if args.seq_len < 8:
        raise UserError(f"--seq-len {args.seq_len}: must be >= 8")
    if not 0.0 < args.eval_fraction < 0.5:
        raise UserError(f"--eval-fraction {args.eval_fraction}: must be in (0, 0.5)")
    if args.max_files is not None and args.max_files < 1:
        raise UserError(f"--max-files {args.max_files}: must be >= 1")
    if args.max_positions is not None and args.max_positions < 1:
        raise UserError(f"--max-positions {args.max_positions}: must be >= 1")
    if not args.text_field.strip():
        raise UserError("--text-field: must name a field")
    if args.rows_per_shard < 1:
        raise UserError(f"--rows-per-shard {args.rows_per_shard}: must be >= 1")


def run(args: argparse.Namespace) -> int:
    _check_flags(args)
    defaults = DataConfig()
    data_cfg = dataclasses.replace(
        defaults,
        source=args.corpus,
        format=args.format,
        text_field=args.text_field,
        loss_on=args.loss_on,
        eval_source=args.eval_source,
        tokenizer=args.tokenizer,
        vocab_size=args.train_tokenizer if args.train_tokenizer is not None else defaults.vocab_size,
        seq_len=args.seq_len,
        eval_fraction=args.eval_fraction,
        max_files=args.max_files,
        seed=args.seed,
    )
    prepare(data_cfg, args.out, max_positions=args.max_positions, rows_per_shard=args.rows_per_shard)
    return 0
