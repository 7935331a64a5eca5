"""Benchmark: compile time and step time against depth, layers as a Python loop vs one
`lax.scan` (`model.scan_layers`), and an 80-layer Llama-70B-shaped step with tiny widths.

In one run: the `tiny` preset at 4 and 32 layers (batch 8 x 64 tokens, fp32), with
scan_layers off and on; prints the compile and step times and their deep/shallow ratios
(issue targets with scan: compile <= 3x, step <= 10x for 8x the layers). Then compiles and
runs one step of `llama-70b` with tiny widths and all 80 layers (scan on).

    python benchmarks/bench_depth.py [--layers 4,32] [--scan false,true] [--batch 8]
        [--seq_len 64] [--steps 5] [--deep_layers 80] [--json OUT]

Compile times are measured with the persistent compilation cache off.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import parse_variant, prepare_variant, time_steps  # noqa: E402

#: Tiny widths for the Llama-70B-shaped depth check (the preset's 80 layers, GQA, SwiGLU).
DEEP_TINY = "d_model=64,n_heads=8,n_kv_heads=1,d_ff=224,vocab_size=512,max_seq_len=128"
#: Issue targets for 8x the layers with scan_layers on.
TARGETS = {"compile": 3.0, "step": 10.0}


def measure(
    preset_name: str,
    fields: dict[str, Any],
    run: dict[str, int],
    mesh: tuple[int, int, int],
    steps: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """Returns {compile_s, ms_per_step, tokens_per_s, loss, params_m} of one config."""
    from jaxknow.model.config import preset

    cfg = preset(preset_name, **fields)
    p = prepare_variant(cfg, run, mesh, seed)
    out = time_steps(p, steps, warmup)
    return {"compile_s": p.compile_s, "params_m": p.params_m, "use_scan": cfg.use_scan, **out}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the depth benchmark and prints it; returns its figures."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--layers", default="4,32", help="comma list; ratios are last/first")
    ap.add_argument("--scan", default="false,true", help="scan_layers values to compare")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mesh", default="-1,1,1")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deep_preset", default="llama-70b")
    ap.add_argument("--deep_layers", type=int, default=80, help="0 skips the deep check")
    ap.add_argument("--deep_model", default=DEEP_TINY, help="k=v,... tiny widths")
    ap.add_argument("--deep_batch", type=int, default=2)
    ap.add_argument("--deep_seq_len", type=int, default=64)
    ap.add_argument("--compile_cache", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax

    import launch  # noqa: F401  (CPU device count)

    if not args.compile_cache:
        jax.config.update("jax_enable_compilation_cache", False)
    mesh = tuple(int(x) for x in args.mesh.split(","))
    layers = [int(x) for x in args.layers.split(",")]
    scans = [parse_variant(f"s={s}")["s"] for s in args.scan.split(",")]
    run = {"batch": args.batch, "seq_len": args.seq_len, "loss_chunk": 0, "grad_accum": 1}
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, preset {args.preset},"
        f" batch {args.batch} x {args.seq_len}, {args.dtype}",
        flush=True,
    )
    print(f"{'scan_layers':>11} {'layers':>6} {'compile s':>9} {'ms/step':>9} {'tokens/s':>10}")
    rows: list[dict[str, Any]] = []
    for scan in scans:
        for n in layers:
            r = measure(
                args.preset,
                {"n_layers": n, "scan_layers": scan, "dtype": args.dtype},
                run,
                mesh,
                args.steps,
                args.warmup,
                args.seed,
            )
            rows.append({"scan_layers": scan, "layers": n, **r})
            print(
                f"{scan!s:>11} {n:>6} {r['compile_s']:>9.1f} {r['ms_per_step']:>9.1f} "
                f"{r['tokens_per_s']:>10,.0f}",
                flush=True,
            )
    ratios = {}
    for scan in scans:
        lo = next(r for r in rows if r["scan_layers"] == scan and r["layers"] == layers[0])
        hi = next(r for r in rows if r["scan_layers"] == scan and r["layers"] == layers[-1])
        c, s = hi["compile_s"] / lo["compile_s"], hi["ms_per_step"] / lo["ms_per_step"]
        ratios[str(scan)] = {"compile": c, "step": s}
        verdict = (
            f"  (targets with scan: compile <= {TARGETS['compile']:g}x "
            f"{'met' if c <= TARGETS['compile'] else 'MISSED'}, step <= "
            f"{TARGETS['step']:g}x {'met' if s <= TARGETS['step'] else 'MISSED'})"
            if scan is True and layers[-1] == 8 * layers[0]
            else ""
        )
        print(
            f"scan_layers={scan}: {layers[-1]}/{layers[0]} layers: compile {c:.1f}x, "
            f"step {s:.1f}x{verdict}"
        )
    out: dict[str, Any] = {"rows": rows, "ratios": ratios}
    if args.deep_layers:
        fields = {
            **parse_variant(args.deep_model),
            "n_layers": args.deep_layers,
            "scan_layers": True,
            "dtype": args.dtype,
        }
        deep_run = {
            "batch": args.deep_batch,
            "seq_len": args.deep_seq_len,
            "loss_chunk": 0,
            "grad_accum": 1,
        }
        d = measure(args.deep_preset, fields, deep_run, mesh, 1, 0, args.seed)
        ok = math.isfinite(d["loss"])
        out["deep"] = {"preset": args.deep_preset, "layers": args.deep_layers, "ok": ok, **d}
        print(
            f"{args.deep_preset} shape, {args.deep_layers} layers, tiny widths "
            f"({args.deep_model}), scan on: compiled in {d['compile_s']:.1f} s, one step "
            f"{d['ms_per_step']:.0f} ms, loss {d['loss']:.3f} ({'ok' if ok else 'NOT FINITE'})"
        )
        if not ok:
            raise SystemExit("the deep step's loss is not finite")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
