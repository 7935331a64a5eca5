"""Benchmark: a real training run's tokens/s against the bare jitted step's, same config.

Runs `python -m launch.train` (default `configs/smoke.py`: a 200-person bioS world, with the
quickstart's model and pretraining shape, d128 x 4 layers, rotary, 32 x 128 tokens) and
reads its tokens/s from metrics.jsonl (median of the logged rows after the first); then, in
this process, times the bare jitted train step of the same model, batch, mesh and optimizer
on a random batch, and the run's input pipeline alone (`next(iterator)` on the same sources).
Prints the loop / step ratio (issue target >= 0.90) and the pipeline's share of the time.

    python benchmarks/bench_loop.py [--steps 200] [--set data.batch_size=64] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from bench_train import parse_variant, prepare_variant, time_steps  # noqa: E402

#: The quickstart's pretraining shape on the smoke config (dotted config keys).
QUICKSTART_OVERRIDES: dict[str, Any] = {
    "model.pos_embedding": "rope",
    "model.d_model": 128,
    "model.n_layers": 4,
    "model.n_heads": 4,
    "model.d_ff": 512,
    "model.vocab_size": 1024,
    "data.batch_size": 32,
    "data.seq_len": 128,
    "train.log_every": 10,
    "train.checkpoint_every": 0,
}


def load_config(path: str | Path, overrides: dict[str, Any]) -> Any:
    """Returns `get_config()` of a config file with dotted `overrides` applied."""
    spec = importlib.util.spec_from_file_location("bench_loop_config", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--config={path}: cannot be loaded")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def write_config(config_path: str, overrides: dict[str, Any], dest: Path) -> Path:
    """Writes a config file whose `get_config()` is `config_path`'s with `overrides` applied
    (command-line overrides cannot set fields whose default is None); returns its path."""
    dest.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from bench_loop import load_config\n\n\n"
        "def get_config():\n"
        f"    return load_config({str(Path(config_path).resolve())!r}, {overrides!r})\n"
    )
    return dest


def run_training(
    config_path: str, overrides: dict[str, Any], workdir: Path, timeout: float
) -> list[dict[str, Any]]:
    """Runs `launch.train` in a subprocess; returns the rows of its metrics.jsonl."""
    from jaxknow.io.metrics import read_metrics

    conf_dir = Path(tempfile.mkdtemp(prefix="bench_loop_cfg_"))
    conf = write_config(config_path, overrides, conf_dir / "config.py")
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        f"--config={conf}",
        f"--workdir={workdir}",
        "--config.train.progress=False",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    finally:
        shutil.rmtree(conf_dir, ignore_errors=True)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"launch.train failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    print(
        f"training run: {time.perf_counter() - t0:.1f} s wall (world build, compile, "
        f"{overrides.get('train.steps', '?')} steps)",
        flush=True,
    )
    return read_metrics(workdir / "metrics.jsonl")


def time_pipeline(spec: Any, data_dir: Path, batches: int) -> dict[str, float]:
    """Returns the wall and CPU seconds per batch of the run's input pipeline alone."""
    from jaxknow.train.loop import make_iterator

    it = make_iterator(spec, data_dir, None)
    next(it)  # start-up (file opening, first shuffle) is not per batch
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"wall_s_per_batch": wall / batches, "cpu_s_per_batch": cpu / batches}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints it; returns its figures."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.py"))
    ap.add_argument("--steps", type=int, default=200, help="training steps of the real run")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="KEY=VALUE config override on top of the quickstart shape, e.g. "
        "data.batch_size=64 (repeatable)",
    )
    ap.add_argument(
        "--skip_logs",
        type=int,
        default=1,
        help="logged rows dropped from the run's median (warm-up)",
    )
    ap.add_argument("--bare_steps", type=int, default=20)
    ap.add_argument("--pipeline_batches", type=int, default=50)
    ap.add_argument("--workdir", default=None, help="keep the run here (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax

    import launch  # noqa: F401  (CPU device count, as launch.train has)
    from jaxknow.train.setup import parse_run_config

    overrides = dict(QUICKSTART_OVERRIDES)
    overrides["train.steps"] = args.steps
    for item in args.set:
        overrides.update(parse_variant(item))
    cfg = load_config(args.config, overrides)
    spec = parse_run_config(cfg)
    tokens_per_step = spec.data.batch_size * spec.data.seq_len
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_loop_"))
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model "
        f"d{spec.model.d_model} x {spec.model.n_layers} layers, V {spec.model.vocab_size}, batch "
        f"{spec.data.batch_size} x {spec.data.seq_len}, {args.steps} steps",
        flush=True,
    )
    try:
        rows = run_training(args.config, overrides, workdir, args.timeout)
        logged = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][args.skip_logs :]
        if not logged:
            raise SystemExit(
                f"{workdir}/metrics.jsonl: no tokens_per_s rows after the first "
                f"{args.skip_logs}; raise --steps"
            )
        loop_tps = statistics.median(logged)
        pipe = time_pipeline(spec, workdir / "data", args.pipeline_batches)
        mesh = (spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor)
        run = {
            "batch": spec.data.batch_size,
            "seq_len": spec.data.seq_len,
            "loss_chunk": spec.train.loss_chunk,
            "grad_accum": spec.train.grad_accum,
        }
        p = prepare_variant(spec.model, run, mesh, spec.seed, spec.optim)
        bare = time_steps(p, args.bare_steps, 3)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    loop_step_s = tokens_per_step / loop_tps
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "loop_tokens_per_s": loop_tps,
        "loop_rows": logged,
        "step_tokens_per_s": bare["tokens_per_s"],
        "ratio": loop_tps / bare["tokens_per_s"],
        "pipeline_tokens_per_s": tokens_per_step / pipe["wall_s_per_batch"],
        "pipeline_share_of_step": pipe["wall_s_per_batch"] / loop_step_s,
        "pipeline_share_of_cpu": pipe["cpu_s_per_batch"] / (loop_step_s * (cores or 1)),
        **pipe,
    }
    print(
        f"loop (metrics.jsonl, median of {len(logged)} rows): {loop_tps:,.0f} tokens/s "
        f"({loop_step_s * 1e3:.1f} ms/step)"
    )
    print(
        f"bare jitted step:                  {bare['tokens_per_s']:,.0f} tokens/s "
        f"({bare['ms_per_step']:.1f} ms/step)"
    )
    print(
        f"loop / step: {out['ratio']:.2f} (target >= 0.90: "
        f"{'met' if out['ratio'] >= 0.9 else 'MISSED'})"
    )
    print(
        f"input pipeline alone: {out['pipeline_tokens_per_s']:,.0f} tokens/s; "
        f"{pipe['wall_s_per_batch'] * 1e3:.1f} ms wall, {pipe['cpu_s_per_batch'] * 1e3:.1f} ms "
        f"CPU per batch = {out['pipeline_share_of_step']:.1%} of the loop's step time, "
        f"{out['pipeline_share_of_cpu']:.1%} of the CPU time of {cores} cores"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
