"""Benchmark: causal attention in query blocks (`ModelConfig.attention_query_block`) against one
block, in the forward pass of a preset's layers at equal tokens per batch and growing length.

    JAXKNOW_CPU_DEVICES=1 .venv/bin/python benchmarks/bench_attention.py \\
        [--preset smollm2-135m] [--layers 4] [--tokens 5120] [--seq_lens 128,256,512,1024,2048] \\
        [--blocks 0,256,64] [--repeats 3]

For each sequence length T the batch is tokens / T rows of random token ids (one segment per
row, as scoring runs); each block setting is compiled once, then timed in alternating rounds in
this one process (best of `--repeats`). Prints milliseconds per layer, the ratio of each
setting to the first one, and the largest difference of the final hidden states from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import launch  # noqa: E402,F401  (CPU device count and compilation cache, before jax loads)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Runs the benchmark; returns one row per (length, block setting)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=5120, help="token slots per batch")
    ap.add_argument("--seq_lens", default="128,256,512,1024,2048")
    ap.add_argument("--blocks", default="0,256,64", help="attention_query_block settings")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxknow.model import transformer
    from jaxknow.model.config import preset
    from jaxknow.model.params import init_params, param_specs

    blocks = [int(b) for b in args.blocks.split(",")]
    base = preset(args.preset, n_layers=args.layers, scan_layers=True)
    params = init_params(param_specs(base), jax.random.key(0), jnp.float32)
    print(
        f"{args.preset} x {args.layers} layers, {args.tokens} token slots per batch, "
        f"{jax.devices()[0].device_kind} x {len(jax.devices())}"
    )
    rows = []
    for t in (int(x) for x in args.seq_lens.split(",")):
        b = max(args.tokens // t, 1)
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.vocab_size, (b, t)))
        kw = dict(
            positions=jnp.broadcast_to(jnp.arange(t), (b, t)), segment_ids=jnp.ones((b, t), int)
        )
        fns, outs = {}, {}
        for blk in blocks:
            cfg = base.replace(attention_query_block=blk, max_seq_len=max(t, base.max_seq_len))
            fns[blk] = jax.jit(
                lambda p, x, cfg=cfg, kw=kw: transformer.forward(p, x, cfg, **kw).hidden
            )
            outs[blk] = np.asarray(fns[blk](params, tokens))
        best = {blk: float("inf") for blk in blocks}
        for _ in range(args.repeats):
            for blk, fn in fns.items():
                start = time.perf_counter()
                fn(params, tokens).block_until_ready()
                best[blk] = min(best[blk], time.perf_counter() - start)
        for blk in blocks:
            row = {
                "seq_len": t,
                "batch": b,
                "block": blk,
                "ms_per_layer": best[blk] / args.layers * 1e3,
                "ratio": best[blocks[0]] / best[blk],
                "max_abs_diff": float(np.abs(outs[blk] - outs[blocks[0]]).max()),
            }
            rows.append(row)
            print(
                f"T {t:5d} x {b:3d} rows  block {blk:4d}: {row['ms_per_layer']:7.1f} ms/layer  "
                f"{row['ratio']:.2f}x  max |diff| {row['max_abs_diff']:.1e}"
            )
    return rows


if __name__ == "__main__":
    main()
