"""Benchmark: training-step throughput and model-FLOPs utilisation (MFU) of jaxknow.

Default shape: the bioS paper model (GPT-2 small with rotary, 12x12x768, vocabulary 50257),
context 512, batch 96, bf16 compute, fp32 master weights, AdamW — the shape of the PyTorch
reference `torch_gpt2_baseline.py`. Each `--variant` is one lever to measure on its own
(fields of the model config, `batch`, `seq_len`, `loss_chunk`, `grad_accum`):

    python benchmarks/bench_train.py [--preset gpt2-small-rope] [--batch 96] [--seq_len 512]
        [--variant remat=dots] [--variant loss_chunk=128] [--variant attention_impl=xla]
        [--torch_baseline ../shared/bench/torch_gpt2_baseline.py]

With `--torch_baseline` the reference script runs first in a subprocess on the same machine
and the ratio of tokens/s is printed for each variant. MFU = tokens/s x (6N + 12·L·d·T) / peak,
with the peak known for H100/H200/A100/L4 and TPU chips (blank on CPU). Random tokens, random
weights; nothing is downloaded. On a CPU use e.g. ``--preset tiny --batch 16 --seq_len 128``.
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN_FIELDS = ("batch", "seq_len", "loss_chunk", "grad_accum")


def parse_variant(text: str) -> dict[str, Any]:
    """Returns the overrides of a variant "k=v,k=v" (ints, floats, booleans parsed)."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise SystemExit(f"--variant {text!r}: {part!r} is not KEY=VALUE")
        k, v = part.split("=", 1)
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                continue
        else:
            out[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
            if k == "remat" and v.lower() == "none":
                out[k] = "none"
    return out


def bench_variant(base: Any, run: dict[str, int], mesh_shape: tuple[int, int, int], steps: int,
                  warmup: int, seed: int) -> dict[str, Any]:
    """Returns {tokens_per_s, ms_per_step, mfu, peak_bytes, compile_s, loss} of one variant."""
    import jax
    import jax.numpy as jnp

    from jaxknow.model.flops import peak_flops, train_flops_per_token
    from jaxknow.model.params import count_params, flatten, param_specs
    from jaxknow.parallel.mesh import make_mesh
    from jaxknow.parallel.rules import DEFAULT_RULES, Sharder
    from jaxknow.train import optim
    from jaxknow.train.loop import batch_shardings
    from jaxknow.train.setup import init_sharded_params, sharded_state
    from jaxknow.train.step import train_step

    cfg = base
    mesh = make_mesh(*mesh_shape)
    b, t = run["batch"], run["seq_len"]
    specs = param_specs(cfg)
    params = init_sharded_params(specs, jax.random.key(seed), cfg.storage_dtype, mesh)
    ocfg = optim.OptimConfig(lr=3e-4, warmup_steps=2, total_steps=1000)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    state, sh = sharded_state(params, {}, flatten(specs), tx, mesh, DEFAULT_RULES)
    bsh = batch_shardings(mesh, DEFAULT_RULES, b, t)
    key = jax.random.key(seed + 1)
    tokens = jax.random.randint(key, (b, t + 1), 0, cfg.vocab_size, dtype=jnp.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "weights": jnp.ones((b, t), jnp.float32),
             "segment_ids": jnp.ones((b, t), jnp.int32),
             "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}
    batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}
    step = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched,
                                     sharder=Sharder(mesh), grad_accum=run["grad_accum"],
                                     loss_chunk=run["loss_chunk"]),
                   in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    tok_s = b * t / dt
    peak = peak_flops()
    n_dev = mesh.devices.size
    stats = jax.devices()[0].memory_stats() or {}
    ma = compiled.memory_analysis()
    compiled_bytes = (int(ma.argument_size_in_bytes) + int(ma.temp_size_in_bytes)
                      + int(ma.output_size_in_bytes) - int(ma.alias_size_in_bytes)) if ma else None
    return {
        "params_m": count_params(specs) / 1e6,
        "tokens_per_s": tok_s,
        "ms_per_step": dt * 1e3,
        "mfu": tok_s * train_flops_per_token(cfg, t) / (peak * n_dev) if peak else None,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "compiled_bytes": compiled_bytes,
        "compile_s": compile_s,
        "loss": float(m["loss"]),
    }


def run_torch_baseline(script: str, batch: int) -> float | None:
    """Returns the tokens/s the PyTorch reference prints (None when it fails)."""
    proc = subprocess.run([sys.executable, script, str(batch)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    print(out.strip().splitlines()[-1] if out.strip() else "(no output)")
    found = re.search(r"([\d,]+) tokens/s", out)
    if proc.returncode or not found:
        print(f"torch baseline failed (exit {proc.returncode})")
        return None
    return float(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2-small-rope")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--loss_chunk", type=int, default=0)
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[],
                    help="k=v,... overriding model fields or batch/seq_len/loss_chunk/grad_accum")
    ap.add_argument("--torch_baseline", default=None, help="path of torch_gpt2_baseline.py")
    args = ap.parse_args()

    import jax

    import launch  # noqa: F401  (CPU device count, compilation cache)
    from jaxknow.model.config import preset

    baseline = run_torch_baseline(args.torch_baseline, args.batch) if args.torch_baseline \
        else None
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}),"
          f" jax {jax.__version__}, mesh {mesh_shape}")
    width = max([34] + [len(v) for v in args.variant])
    header = (f"{'variant':<{width}} {'params':>7} {'batch':>5} {'seq':>5} {'ms/step':>9} "
              f"{'tokens/s':>11} {'MFU':>6} {'peak GiB':>9} {'vs torch':>8}")
    print(header)
    for text in [""] + args.variant:
        over = parse_variant(text)
        run = {"batch": args.batch, "seq_len": args.seq_len, "loss_chunk": args.loss_chunk,
               "grad_accum": args.grad_accum}
        run.update({k: over.pop(k) for k in list(over) if k in RUN_FIELDS})
        fields = {"dtype": args.dtype, "remat": args.remat,
                  "max_seq_len": max(run["seq_len"], 512), **over}
        cfg = preset(args.preset, **fields)
        r = bench_variant(cfg, run, mesh_shape, args.steps, args.warmup, args.seed)
        mem = r["peak_bytes"] or r["compiled_bytes"]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        ratio = f"{r['tokens_per_s'] / baseline:.2f}x" if baseline else "-"
        print(f"{text or 'base':<{width}} {r['params_m']:>6.1f}M {run['batch']:>5} "
              f"{run['seq_len']:>5} "
              f"{r['ms_per_step']:>9.1f} {r['tokens_per_s']:>11,.0f} {mfu:>6} "
              f"{(mem or 0) / 2**30:>9.2f} {ratio:>8}   (compile {r['compile_s']:.0f}s, "
              f"loss {r['loss']:.3f})", flush=True)


if __name__ == "__main__":
    main()
