"""Ray Data start-up: how long until the workers of a run hold their first batches, V1 or V2 Parquet reader.

    .venv/bin/python bench/data_startup.py            # the demo's prepared stdlib data: ~2 min idle
    .venv/bin/python bench/data_startup.py --quick    # smoke run on a tiny corpus, writes to the temp dir

Every Ray Train run starts with this wait: each worker reads its whole eval shard (the evenly spaced
eval sequences, `workers/data.py::eval_batches`) and then its first training batch. Ray 2.60 reads
Parquet through its "V2" datasource by default, which lists files through a pool of FooterReader
actors; `orchestrator/train/trainer.py::configure_ray_data` picks the V1 reader instead. This times the
same datasets `build_trainer` makes (`read_parquet` with `preserve_order`, split over the demo's 2
workers with `equal=True`) consumed by 2 one-CPU actors the way the workers consume them, in one Ray
session (`ensure_ray`, as the CLI starts it), the two readers alternating round by round. Reported:
median seconds until every consumer has its eval shard and first train batch, per reader, and the
per-round v1/v2 ratios. Written to bench/results/data_startup.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.ab_timing import ci_text, machine, write_results  # noqa: E402
from bench.common import median, paired_summary  # noqa: E402

RESULTS = REPO / "bench" / "results" / "data_startup.json"
READERS = ("v1", "v2")  # DataContext.use_datasource_v2 False / True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="consumers, as the demo's Ray Train workers")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="whose data section to read")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.out = args.out or str(Path(tempfile.gettempdir()) / "data_startup.json")
    args.out = Path(args.out or RESULTS)
    return args


def prepared_data(args: argparse.Namespace) -> Path:
    """The config's data, prepared as a run prepares it (reused from the cache when present)."""
    from orchestrator.config import apply_overrides, config_from_dict, read_yaml
    from orchestrator.data.prepare import ensure_prepared
    from orchestrator.train.trainer import PRESET_MAX_POSITIONS

    overrides = []
    if args.quick:  # a tiny corpus: two stdlib modules, a small vocabulary
        corpus = Path(tempfile.mkdtemp(prefix="data_startup_"))
        for name in ("argparse.py", "textwrap.py", "json/decoder.py"):
            source = Path(json.__file__).parents[1] / name
            if source.is_file():
                (corpus / source.name).write_text(source.read_text())
        cache = Path(tempfile.gettempdir()) / "data_startup_cache"
        overrides = [f"data.source={corpus}", "data.vocab_size=512", f"data.cache_dir={cache}"]
    config = config_from_dict(apply_overrides(read_yaml(args.config), overrides))
    return ensure_prepared(config.data, max_positions=PRESET_MAX_POSITIONS)


def time_to_first_batches(data_dir: Path, reader: str, workers: int, micro_batch: int) -> float:
    """Seconds from `read_parquet` until every consumer has read its eval shard and one train batch."""
    import ray
    import ray.data

    from orchestrator.train.trainer import configure_ray_data

    @ray.remote(num_cpus=1)
    def consume(eval_split, train_split, micro_batch: int) -> int:
        rows = sum(len(b["input_ids"]) for b in eval_split.iter_batches(batch_size=256, batch_format="numpy"))
        first = next(iter(train_split.iter_batches(batch_size=micro_batch, batch_format="numpy")))
        return rows + len(first["input_ids"])

    context = ray.data.DataContext.get_current()
    configure_ray_data(context, environ={})
    context.use_datasource_v2 = reader == "v2"
    execution = ray.data.ExecutionOptions(preserve_order=True)
    started = time.perf_counter()
    splits = {}
    for name in ("eval", "train"):
        ds = ray.data.read_parquet(str(data_dir / name))
        ds.context.execution_options = execution
        splits[name] = ds.streaming_split(workers, equal=True)
    rows = ray.get(
        [consume.remote(splits["eval"][w], splits["train"][w], micro_batch) for w in range(workers)]
    )
    elapsed = time.perf_counter() - started
    assert all(r > micro_batch for r in rows), rows
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data_dir = prepared_data(args)

    from orchestrator.train.ray_session import ensure_ray

    ensure_ray(args.workers, 1.0)
    samples: dict[str, list[float]] = {r: [] for r in READERS}
    ratios = []
    for r in range(args.rounds):
        order = READERS if r % 2 == 0 else READERS[::-1]
        for reader in order:
            samples[reader].append(time_to_first_batches(data_dir, reader, args.workers, args.micro_batch))
        ratios.append(samples["v1"][-1] / samples["v2"][-1])
        print(
            f"round {r + 1}/{args.rounds}: v1 {samples['v1'][-1]:.1f} s, v2 {samples['v2'][-1]:.1f} s",
            flush=True,
        )

    results: dict[str, Any] = {
        "seconds_to_first_batches": {r: median(samples[r]) for r in READERS},
        "samples": samples,
        "v1_over_v2": paired_summary(ratios),
        "data_dir": str(data_dir),
        "workers": args.workers,
        "rounds": args.rounds,
        "machine": machine(),
    }
    import ray

    results["ray"] = ray.__version__
    ratio = results["v1_over_v2"]
    print()
    print(f"{'reader':<8}{'s to first batches (median)':>30}")
    for reader in READERS:
        print(f"{reader:<8}{results['seconds_to_first_batches'][reader]:>30.1f}")
    print(f"v1/v2: {ci_text(ratio)} (95% CI over rounds)")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
