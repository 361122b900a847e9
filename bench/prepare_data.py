"""prepare-data on Ray Data: tokens/s against a single-process `tokenizers` loop, and the driver's
peak memory as the corpus grows.

    .venv/bin/python bench/prepare_data.py            # 50 MB x 1, 4, 16 (about 800 MB of text): long
    .venv/bin/python bench/prepare_data.py --quick    # 2 MB x 1, 2: a smoke run, writes to the temp dir

The corpus is the standard library's .py files repeated into ~1 MB text files until it holds the
size asked for (`--mb` times each scale). A byte-level BPE (vocab 4096) is trained once on a 2 MB
sample and saved; both sides use it:
  single process  every file read and `encode_batch`-ed in batches of 64 by the `tokenizers` backend
                  (its Rust thread pool on: the fastest one Python process gets), ids + eos counted
  pipeline        `prepare()` (orchestrator/data/prepare.py: read tasks, the tokenising actor pool,
                  packing, write_parquet, manifest) in a fresh child process with Ray already started,
                  so Ray's start-up is not in its time; the child reports its own peak RSS
                  (ru_maxrss: the driver only, Ray's workers are other processes).
tokens/s = the tokens the manifest counts / wall seconds. Written to bench/results/prepare_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.ab_timing import machine, write_results  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prepare_data.json"
FILE_BYTES = 1 << 20
SEQ_LEN = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=50.0, help="corpus size at scale 1 (MB)")
    p.add_argument("--scales", default="1,4,16", help="corpus sizes as multiples of --mb")
    p.add_argument("--quick", action="store_true", help="--mb 2 --scales 1,2, results in the temp dir")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs=3, metavar=("CORPUS", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.scales = 2.0, "1,2"
        args.out = args.out or Path(tempfile.gettempdir()) / "prepare_data.json"
    args.out = args.out or RESULTS
    return args


def make_corpus(directory: Path, megabytes: float) -> Path:
    """~1 MB files of standard-library text, repeated until `megabytes` MB."""
    from orchestrator.data.corpus import resolve_files

    directory.mkdir(parents=True, exist_ok=True)
    _, _, files = resolve_files("stdlib")
    target, written, index, buffer = int(megabytes * 1e6), 0, 0, []
    while written < target:
        for path in files:
            buffer.append(path.read_text(encoding="utf-8", errors="replace"))
            if sum(map(len, buffer)) >= FILE_BYTES:
                text = "".join(buffer)
                (directory / f"part-{index:05d}.txt").write_text(text, encoding="utf-8")
                written, index, buffer = written + len(text.encode()), index + 1, []
                if written >= target:
                    break
    return directory


def train_tokenizer(corpus: Path, out: Path) -> Path:
    from orchestrator.data.tokenizer_training import save_trained, train_bpe

    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.txt"))[:2]]
    save_trained(train_bpe(texts, 4096), out)
    return out


def single_process(corpus: Path, tokenizer_dir: Path) -> dict[str, float]:
    from orchestrator.data.tokenizer_training import load_pretrained, text_encoder

    os.environ.pop("TOKENIZERS_PARALLELISM", None)  # the Rust thread pool on, as a user's loop has it
    encoder = text_encoder(load_pretrained(tokenizer_dir))
    started = time.monotonic()
    tokens = 0
    files = sorted(corpus.glob("*.txt"))
    for start in range(0, len(files), 64):
        texts = [p.read_text(encoding="utf-8") for p in files[start : start + 64]]
        tokens += sum(len(ids) + 1 for ids in encoder.encode(texts))
    seconds = time.monotonic() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def child(corpus: str, tokenizer_dir: str, out: str) -> None:
    """One `prepare()` in this process (Ray started first, not timed); prints a JSON line."""
    from orchestrator.config import DataConfig
    from orchestrator.data.prepare import _ensure_ray, prepare

    _ensure_ray()
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    started = time.monotonic()
    prepare(DataConfig(source=corpus, tokenizer=tokenizer_dir, seq_len=SEQ_LEN), out, max_positions=SEQ_LEN)
    seconds = time.monotonic() - started
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {"tokens": manifest["tokens"], "seconds": seconds, "peak_rss_mb": peak / 1e6, "ray_cpus": cpus}
    print("RESULT " + json.dumps(result), flush=True)


def pipeline(corpus: Path, tokenizer_dir: Path, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(corpus), str(tokenizer_dir), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"prepare failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    scales = [int(s) for s in args.scales.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        tokenizer_dir = None
        for scale in scales:
            corpus = make_corpus(root / f"corpus-{scale}", args.mb * scale)
            tokenizer_dir = tokenizer_dir or train_tokenizer(corpus, root / "tokenizer")
            single = single_process(corpus, tokenizer_dir)
            piped = pipeline(corpus, tokenizer_dir, root / f"out-{scale}")
            rows.append({"scale": scale, "corpus_mb": args.mb * scale, "single": single, "pipeline": piped})
            print(
                f"{args.mb * scale:>8.0f} MB  single {single['tokens_per_s']:>12,.0f} tok/s   pipeline "
                f"{piped['tokens_per_s']:>12,.0f} tok/s ({piped['tokens_per_s'] / single['tokens_per_s']:.2f}x)   "
                f"driver peak RSS {piped['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
    print()
    print(f"{'corpus MB':>10}{'single tok/s':>15}{'pipeline tok/s':>17}{'ratio':>8}{'driver RSS MB':>15}")
    for row in rows:
        s, p = row["single"], row["pipeline"]
        ratio = p["tokens_per_s"] / s["tokens_per_s"]
        print(
            f"{row['corpus_mb']:>10.0f}{s['tokens_per_s']:>15,.0f}{p['tokens_per_s']:>17,.0f}{ratio:>8.2f}{p['peak_rss_mb']:>15,.0f}"
        )
    growth = rows[-1]["pipeline"]["peak_rss_mb"] - rows[0]["pipeline"]["peak_rss_mb"]
    print(f"driver peak RSS grows by {growth:,.0f} MB from {scales[0]}x to {scales[-1]}x (target < 100 MB)")
    results = {
        "machine": machine(),
        "cpus": os.cpu_count(),
        "seq_len": SEQ_LEN,
        "rows": rows,
        "driver_rss_growth_mb": growth,
    }
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
