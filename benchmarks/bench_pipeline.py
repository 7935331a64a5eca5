"""Benchmark: tokens/s the grain input pipeline delivers to the trainer.

Materialises a bioS world (multi5+permute+fullname), then times batches of the bioS paper
shape (batch 96 x 512 tokens, concat packing) read from its ArrayRecord shards: on one core
in-process by default, or with `--workers N` grain worker processes (the GPU machine has 16
cores). Also times the QA source with first-fit packing and one example per row ("pad").

    python benchmarks/bench_pipeline.py [--num_people 20000] [--workers 0] [--batches 30]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints it; returns {"SOURCE/PACKING": {tokens_per_s, ...}}."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num_people", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--data_dir", default=None, help="reuse a materialised bioS world")
    ap.add_argument("--vocab_size", type=int, default=8192, help="BPE vocabulary of the world")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.workers == 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
    from jaxknow.data import pipeline
    from jaxknow.data.build import materialize

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    if not (data_dir / "manifest.json").is_file():
        t = time.perf_counter()
        m = materialize(
            {
                "kind": "bios",
                "num_people": args.num_people,
                "augmentations": ["multi5+permute+fullname"],
                "vocab_size": args.vocab_size,
            },
            data_dir,
            seed=0,
        )
        print(
            f"materialised {args.num_people} people in {time.perf_counter() - t:.1f} s "
            f"({m['sources']['bios_multi5_permute_fullname']['num_tokens']:,} bio tokens)"
        )
    print(f"cores used: {'1 (pinned)' if args.workers == 0 else args.workers} workers")
    out: dict[str, Any] = {}
    for source, packing in (
        ("bios_multi5_permute_fullname", "concat"),
        ("qa_train", "first_fit"),
        ("qa_train", "pad"),
    ):
        seq = args.seq_len if packing == "concat" else 64
        cfg = pipeline.PipelineConfig(
            seq_len=seq, batch_size=args.batch, packing=packing, seed=0, workers=args.workers
        )
        ds = pipeline.build_pipeline(pipeline.source_datasets(str(data_dir), [source]), None, cfg)
        it = iter(ds)
        next(it)
        t = time.perf_counter()
        real = 0
        for _ in range(args.batches):
            b = next(it)
            real += int((b["segment_ids"] > 0).sum())
        dt = time.perf_counter() - t
        slots = args.batches * args.batch * seq
        print(
            f"{source:32s} {packing:9s} seq {seq:4d}: {slots / dt:12,.0f} tokens/s "
            f"({real / dt:,.0f} non-pad), {args.batches / dt:.1f} batches/s"
        )
        out[f"{source}/{packing}"] = {
            "tokens_per_s": slots / dt,
            "non_pad_per_s": real / dt,
            "batch": args.batch,
            "seq_len": seq,
            "workers": args.workers,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
