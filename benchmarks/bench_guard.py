"""Benchmark: cost of the non-finite guard (`jaxknow.train.guard`) on the jitted train step.

Times the plain `train_step`, the guarded step with ``mode="stop"`` and with ``mode="skip"``
(state donated, as in the loop), on random tokens and random weights:

    python benchmarks/bench_guard.py [--preset tiny] [--batch 16] [--seq_len 128] [--steps 50]

On a GPU use e.g. ``--preset gpt2-small-rope --batch 96 --seq_len 512 --dtype bfloat16``.
Prints ms/step for each and the ratio to the plain step.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Parses the flags, runs the three variants and prints their step times."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxknow.model.config import preset
    from jaxknow.model.params import init_params, param_specs
    from jaxknow.train import guard as guard_lib
    from jaxknow.train.optim import OptimConfig, make_optimizer, make_schedule
    from jaxknow.train.state import new_state
    from jaxknow.train.step import train_step

    cfg = preset(args.preset, dtype=args.dtype, max_seq_len=max(args.seq_len, 128))
    ocfg = OptimConfig(lr=1e-3, total_steps=10_000)
    tx, sched = make_optimizer(ocfg, cfg), make_schedule(ocfg)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.seq_len + 1), dtype=np.int32)
    batch = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "weights": jnp.ones((args.batch, args.seq_len), jnp.float32),
        "segment_ids": jnp.ones((args.batch, args.seq_len), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(args.seq_len), (args.batch, args.seq_len)),
    }
    step_fn = functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched)

    def fresh():
        params = init_params(param_specs(cfg), jax.random.key(0), jnp.float32)
        return new_state(params, {}, tx)

    def timed(name, fn, with_guard):
        state = fresh()
        g = guard_lib.initial_guard()
        for _ in range(3):  # compile + warm up
            state, m, *rest = fn(state, batch, g) if with_guard else fn(state, batch)
            g = rest[0] if rest else g
        jax.block_until_ready(state)
        t = time.perf_counter()
        for _ in range(args.steps):
            state, m, *rest = fn(state, batch, g) if with_guard else fn(state, batch)
            g = rest[0] if rest else g
        jax.block_until_ready((state, m))
        return (time.perf_counter() - t) / args.steps * 1e3

    plain = timed("plain", jax.jit(step_fn, donate_argnums=(0,)), False)
    print(f"{args.preset} batch {args.batch} x {args.seq_len} on {jax.devices()[0].platform}")
    print(f"plain        {plain:8.3f} ms/step")
    for mode in guard_lib.MODES:
        ms = timed(mode, jax.jit(guard_lib.guarded(step_fn, mode), donate_argnums=(0,)), True)
        print(f"guard {mode:5s}  {ms:8.3f} ms/step  ({ms / plain:.3f}x)")


if __name__ == "__main__":
    main()
