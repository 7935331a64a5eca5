"""Benchmark: bioS world generation + biography rendering on one CPU core.

Default: N = 100,000 people, multi5+permute+fullname (500,000 biographies).

    .venv/bin/python benchmarks/bench_bios_generation.py [--num-people N] [--aug NAME]

Prints the time to generate the world, to render, biographies/s and the total seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One core: keep any BLAS/OpenMP pools single-threaded (set before numpy is imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def pin_to_one_core() -> str:
    """Pins this process to a single CPU where the OS allows it; returns a description."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity on this OS)"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the benchmark and prints it; returns the timings (seconds) and biographies/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-people", type=int, default=100_000)
    parser.add_argument("--aug", default="multi5+permute+fullname")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    repo_root = Path(__file__).resolve().parents[1]
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    from jaxknow.studies.bios.world import (
        Augmentation,
        BiosConfig,
        generate_world,
        render_biographies,
    )

    pinned = pin_to_one_core()
    aug = Augmentation.parse(args.aug)
    t0 = time.perf_counter()
    world = generate_world(BiosConfig(num_people=args.num_people, seed=args.seed))
    t1 = time.perf_counter()
    bios = render_biographies(world, aug, seed=args.seed)
    t2 = time.perf_counter()

    gen_s, render_s, total_s = t1 - t0, t2 - t1, t2 - t0
    chars = sum(len(b.text) for b in bios)
    print(f"bioS generation benchmark ({pinned})")
    print(f"  people            {args.num_people:,}")
    print(f"  augmentation      {aug.name}")
    print(f"  biographies       {len(bios):,}  ({chars / len(bios):.0f} chars on average)")
    print(f"  generate_world    {gen_s:8.2f} s")
    print(f"  render            {render_s:8.2f} s  ({len(bios) / render_s:,.0f} biographies/s)")
    print(f"  total             {total_s:8.2f} s  ({len(bios) / total_s:,.0f} biographies/s)")
    return {
        "generate_s": gen_s,
        "render_s": render_s,
        "total_s": total_s,
        "bios_per_s": len(bios) / total_s,
    }


if __name__ == "__main__":
    main()
