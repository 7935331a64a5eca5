"""Benchmark: converting a GGUF file into a jaxknow model directory (`jaxknow.io.gguf`).

Prints the conversion's seconds and the process's peak RSS next to the GGUF file's size and
the size of the float32 model it becomes, and the RSS before the conversion (Python + JAX
imports), so the conversion's own share shows: streaming tensor by tensor should add about one
model's float32 bytes (the arrays being saved) plus one tensor, not the model twice.

    python benchmarks/bench_gguf.py --src gguf:smollm2-135m
    python benchmarks/bench_gguf.py --src FILE.gguf --devices 1

A named model ("gguf:NAME") is read from its installed package (the Gemma 3 chunks are
assembled into a temporary file first, not timed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    """Returns the current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> None:
    """Converts the file once and prints one JSON line of figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="a .gguf file or gguf:NAME")
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    args = ap.parse_args()
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax  # noqa: F401  (imported before the baseline RSS is read)

    from jaxknow.io import named_models
    from jaxknow.io.gguf import gguf_to_jaxknow
    from jaxknow.io.load import checkpoint_model_config
    from jaxknow.model.params import flatten, param_specs

    work = Path(tempfile.mkdtemp(prefix="bench_gguf_"))
    src = args.src
    if named_models.is_named(src):
        model = named_models.named_model(src)
        parts = named_models.chunk_files(model)
        if len(parts) == 1:
            src = str(parts[0])
        else:
            src = str(work / f"{model.name}.gguf")
            with open(src, "wb") as out:
                for p in parts:
                    out.write(p.read_bytes())
    before = _rss_mb()
    t0 = time.perf_counter()
    dst = gguf_to_jaxknow(src, work / "model")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    cfg = checkpoint_model_config(dst)
    n = sum(math.prod(s.shape) for s in flatten(param_specs(cfg)).values())
    print(
        json.dumps(
            {
                "src": args.src,
                "file_mb": round(Path(src).stat().st_size / 1e6, 1),
                "params_m": round(n / 1e6, 1),
                "fp32_model_mb": round(4 * n / 1e6, 1),
                "seconds": round(seconds, 1),
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(peak, 1),
                "peak_minus_before_mb": round(peak - before, 1),
                "devices": args.devices,
            }
        )
    )


if __name__ == "__main__":
    main()
