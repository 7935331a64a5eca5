"""Benchmark: several optimizer steps per jitted call, at the bioS quickstart's pretraining shape.

Builds the quickstart's pretraining run the way the study does (configs/bios/quickstart.py's
model and `pretrain` stage through `experiments.common.stage_config`, parsed by
`train.setup.parse_run_config`; mesh, parameters, optimizer and the guarded, donating jitted
step from the training code; on CPU one XLA device per core, as `launch` sets up) and times,
in alternating rounds:

- K=1: today's loop body, the jitted step called once per optimizer step on a fresh host
  (numpy) batch, put on the devices with `loop.to_global` as the loop does;
- K=1 resident: the same step on batches already on the devices (no host transfer);
- K>1: one jitted call running K full optimizer steps (`lax.scan` over K stacked batches,
  each iteration today's guarded step), the K host batches stacked with numpy and put on the
  devices in one `to_global`.

It checks that K steps in one call give the same parameters as K single calls on the same
batches (largest absolute difference), and estimates the share of a K=1 step spent outside
the jitted computation as 1 - (per-step time at the largest K) / (K=1 time).

    python benchmarks/bench_steps_per_call.py [--ks 2,4,8,16] [--steps 64] [--rounds 3]
        [--loop 300 --loop_k 4 --loop_data DIR]

`--loop N` then also times the real loop (`loop.train`, N steps, log_every 25, the same model,
optimizer and batch shape on the smoke config's 200-person bioS biographies, materialised
once in `--loop_data`) with `train.steps_per_call` 1 and `--loop_k`, alternating for
`--rounds`: the median of the logged tokens/s after the first rows, and the wall time of the
whole call (compiles included; the persistent compilation cache is on as in `launch`).

Batches are random tokens packed like the quickstart's first-fit rows (documents of 61-97
tokens); timing does not depend on the token values. The input pipeline itself is not timed
(benchmarks/bench_loop.py measures it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import launch  # noqa: E402, F401  (XLA flags: one CPU device per core, AVX2; before jax)


def quickstart_config(
    steps: int | None = None,
    sources: tuple[dict[str, Any], ...] = ({"name": "bench"},),
    data_dir: str = "/nonexistent",
    **train: Any,
) -> Any:
    """Returns the RunSpec of the quickstart's pretraining stage, as its study builds it
    (`parse_study`, `common.stage_spec`); the sources and data directory are placeholders
    unless given (nothing is read to time the jitted call); `train` overrides loop fields."""
    import dataclasses

    from configs.bios.quickstart import get_config
    from jaxknow.experiments import common
    from jaxknow.studies.bios.study import parse_study

    study = parse_study(get_config())
    run = common.stage_spec(
        study.model,
        study.mesh,
        study.pretrain,
        seed=study.seed,
        sources=sources,
        data_dir=data_dir,
        steps=steps,
    )
    return dataclasses.replace(run, train=dataclasses.replace(run.train, **train))


def loop_config(steps: int, k: int, data_dir: str) -> Any:
    """Returns the quickstart pretraining run on the smoke world's biographies (`main`
    materialises them in `data_dir` once, `build.ensure_sources`), with `train.steps_per_call`
    = k (no checkpoints but the last, no progress bar)."""
    import dataclasses

    from configs.smoke import get_config as smoke

    run = quickstart_config(
        steps,
        sources=({"name": "bios_single"},),
        data_dir=data_dir,
        steps_per_call=k,
        tensorboard=False,
        progress=False,
    )
    world = dict(smoke().data.world.to_dict(), vocab_size=2048)
    return dataclasses.replace(run, data=dataclasses.replace(run.data, world=world))


def time_loop(steps: int, k: int, data_dir: str) -> dict[str, float]:
    """Runs loop.train for `steps` steps in a fresh workdir; returns {tokens_per_s (median of
    the logged rows after the first two), wall_s}."""
    import shutil
    import tempfile

    from jaxknow.io.metrics import read_metrics
    from jaxknow.train import loop

    work = Path(tempfile.mkdtemp(prefix="bench_spc_"))
    try:
        t0 = time.perf_counter()
        loop.train(loop_config(steps, k, data_dir), work)
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(work / "metrics.jsonl") if "tokens_per_s" in r]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[2:]), "wall_s": wall}


def packed_batch(rng: Any, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    """Returns one host batch of first-fit-like rows: whole documents of 61-97 tokens, the
    rest of the row padding (segment 0, weight 0)."""
    import numpy as np

    out = {
        "inputs": rng.integers(0, vocab, (batch, seq), dtype=np.int32),
        "targets": rng.integers(0, vocab, (batch, seq), dtype=np.int32),
        "weights": np.zeros((batch, seq), np.float32),
        "segment_ids": np.zeros((batch, seq), np.int32),
        "positions": np.zeros((batch, seq), np.int32),
    }
    for r in range(batch):
        at, seg = 0, 1
        while True:
            n = int(rng.integers(61, 98))
            if at + n > seq:
                break
            out["segment_ids"][r, at : at + n] = seg
            out["positions"][r, at : at + n] = np.arange(n)
            out["weights"][r, at : at + n] = 1.0
            at, seg = at + n, seg + 1
    return out


class Run:
    """The quickstart run's pieces: spec, mesh, optimizer, jitted steps, fresh states."""

    def __init__(self, spec: Any) -> None:
        """`spec`: the run's RunSpec (`quickstart_config`)."""
        import functools

        from jax.sharding import NamedSharding, PartitionSpec

        from jaxknow.parallel.rules import DEFAULT_RULES, Sharder
        from jaxknow.train import guard as guard_lib
        from jaxknow.train import loop, setup
        from jaxknow.train.optim import make_optimizer, make_schedule
        from jaxknow.train.step import train_step

        self.spec = spec
        self.mesh = setup.build_mesh(self.spec)
        self.tx = make_optimizer(self.spec.optim, self.spec.model)
        _, self.shardings = self.fresh()
        self.jstep, self.b_sh = loop._jit_step(
            self.spec, self.mesh, DEFAULT_RULES, self.tx, self.shardings
        )
        tc = self.spec.train
        self.step_fn = guard_lib.guarded(
            functools.partial(
                train_step,
                cfg=self.spec.model,
                tx=self.tx,
                schedule=make_schedule(self.spec.optim),
                sharder=Sharder(self.mesh, DEFAULT_RULES),
                grad_accum=tc.grad_accum,
                loss_chunk=tc.loss_chunk,
            ),
            tc.nonfinite,
        )
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.stacked_sh = {
            k: NamedSharding(self.mesh, PartitionSpec(None, *s.spec)) for k, s in self.b_sh.items()
        }
        self._multi: dict[int, Any] = {}

    def fresh(self) -> tuple[Any, Any]:
        """Returns (a fresh train state, its shardings), as a new run starts."""
        from jaxknow.parallel.rules import DEFAULT_RULES
        from jaxknow.train import setup

        params = setup.initial_params(self.spec, self.mesh, DEFAULT_RULES)
        return setup.build_state(params, self.spec, self.tx, self.mesh, DEFAULT_RULES)

    def guard(self) -> Any:
        import jax

        from jaxknow.train import guard as guard_lib

        return jax.device_put(guard_lib.initial_guard(), self.replicated)

    def multi(self, k: int) -> Any:
        """Returns the jitted K-step call (state, stacked batches, guard) -> (state, stacked
        metrics, guard), donating the state."""
        import jax

        if k not in self._multi:

            def many(state: Any, batches: Any, guard: Any) -> Any:
                def body(carry: Any, batch: Any) -> Any:
                    s, g = carry
                    s, m, g = self.step_fn(s, batch, g)
                    return (s, g), m

                (state, guard), metrics = jax.lax.scan(body, (state, guard), batches)
                return state, metrics, guard

            self._multi[k] = jax.jit(
                many,
                in_shardings=(self.shardings, self.stacked_sh, self.replicated),
                out_shardings=(self.shardings, self.replicated, self.replicated),
                donate_argnums=(0,),
            )
        return self._multi[k]

    def put(self, local: dict[str, Any]) -> dict[str, Any]:
        from jaxknow.train.loop import to_global

        return to_global(local, self.b_sh)

    def put_stacked(self, locals_: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np

        from jaxknow.train.loop import to_global

        return to_global(
            {k: np.stack([b[k] for b in locals_]) for k in locals_[0]}, self.stacked_sh
        )


def max_param_diff(run: Run, k: int, host: list[dict[str, Any]]) -> tuple[float, float]:
    """Returns (the largest |difference| between the parameters after K single calls and after
    one K-step call on the same K batches from the same fresh state, the largest |change| of a
    parameter over those K steps: the scale the difference is read against)."""
    import jax
    import numpy as np

    start = jax.device_get(jax.tree.leaves(run.fresh()[0].params))
    a, _ = run.fresh()
    g = run.guard()
    for b in host[:k]:
        a, _, g = run.jstep(a, run.put(b), g)
    b_state, _ = run.fresh()
    b_state, _, _ = run.multi(k)(b_state, run.put_stacked(host[:k]), run.guard())
    la, lb = (
        jax.device_get(jax.tree.leaves(a.params)),
        jax.device_get(jax.tree.leaves(b_state.params)),
    )
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb))
    change = max(float(np.max(np.abs(x - y))) for x, y in zip(la, start))
    return diff, change


class Variant:
    """One timed way of running steps; its state advances from round to round."""

    def __init__(self, run: Run, k: int, host: list[dict[str, Any]], resident: bool = False):
        self.run, self.k, self.host, self.resident = run, k, host, resident
        self.label = f"{k}" + (" resident" if resident else "")
        self.state, _ = run.fresh()
        self.guard = run.guard()
        self.i = 0
        if resident:
            self.dev = [run.put(b) for b in host]

    def next_host(self) -> dict[str, Any]:
        b = self.host[self.i % len(self.host)]
        self.i += 1
        return b

    def call(self) -> Any:
        """Runs one call (K steps); returns its metrics (not waited for)."""
        if self.k == 1:
            if self.resident:
                batch = self.dev[self.i % len(self.dev)]
                self.i += 1
            else:
                batch = self.run.put(self.next_host())
            self.state, m, self.guard = self.run.jstep(self.state, batch, self.guard)
        else:
            batches = self.run.put_stacked([self.next_host() for _ in range(self.k)])
            self.state, m, self.guard = self.run.multi(self.k)(self.state, batches, self.guard)
        return m

    def compile(self) -> float:
        import jax

        t0 = time.perf_counter()
        jax.block_until_ready(self.call())
        return time.perf_counter() - t0

    def time(self, steps: int) -> float:
        """Returns seconds per optimizer step over `steps` steps (one warm call first)."""
        import jax

        jax.block_until_ready(self.call())
        calls = steps // self.k
        t0 = time.perf_counter()
        m = None
        for _ in range(calls):
            m = self.call()
        jax.block_until_ready((m, self.state))
        return (time.perf_counter() - t0) / (calls * self.k)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ks", default="2,4,8,16", help="steps per call to compare with K=1")
    ap.add_argument("--steps", type=int, default=64, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no_resident", action="store_true", help="skip the K=1 resident row")
    ap.add_argument("--loop", type=int, default=0, help="also time loop.train for N steps")
    ap.add_argument("--loop_k", type=int, default=4, help="train.steps_per_call of --loop")
    ap.add_argument("--loop_data", default="", help="data dir of --loop (materialised once)")
    ap.add_argument("--only_loop", action="store_true", help="skip the jitted-call table")
    args = ap.parse_args(argv)
    ks = [int(x) for x in args.ks.split(",") if x]
    if any(args.steps % k for k in ks):
        raise SystemExit(f"--steps={args.steps} must be a multiple of every K in {ks}")

    import jax
    import numpy as np

    from jaxknow.model.flops import train_flops_per_token

    if args.loop:
        import tempfile

        import jaxknow.studies  # noqa: F401  (the bioS world kind)
        from jaxknow.data import build

        data_dir = args.loop_data or tempfile.mkdtemp(prefix="bench_spc_data_")
        lspec = loop_config(args.loop, 1, data_dir)
        if args.loop // lspec.train.log_every < 3:
            raise SystemExit(
                f"--loop {args.loop}: the run logs every {lspec.train.log_every} steps and the "
                f"rate is read from the rows after the first two; give at least "
                f"{3 * lspec.train.log_every}"
            )
        build.ensure_sources(data_dir, ["bios_single"], lspec.data.world, lspec.seed)
    if args.only_loop:
        return loop_table(args, data_dir)
    run = Run(quickstart_config())
    spec = run.spec
    b, t = spec.data.batch_size, spec.data.seq_len
    rng = np.random.default_rng(0)
    host = [packed_batch(rng, b, t, spec.model.vocab_size) for _ in range(max([*ks, 32]))]
    print(
        f"quickstart pretraining shape: d{spec.model.d_model} x {spec.model.n_layers} layers, "
        f"batch {b} x {t} tokens, mesh {dict(run.mesh.shape)} on {jax.device_count()} "
        f"{jax.default_backend()} devices, jax {jax.__version__}",
        flush=True,
    )
    checked = {k: max_param_diff(run, k, host) for k in ks}
    diffs = {k: d for k, (d, _) in checked.items()}
    for k, (d, change) in checked.items():
        print(
            f"K={k}: max |param diff| one call vs {k} single calls {d:.1e} "
            f"(largest parameter change over the {k} steps {change:.1e})",
            flush=True,
        )

    variants = [Variant(run, 1, host)]
    if not args.no_resident:
        variants.append(Variant(run, 1, host, resident=True))
    variants += [Variant(run, k, host) for k in ks]
    for v in variants:
        print(f"K={v.label}: first call (compile) {v.compile():.1f} s", flush=True)
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v.label].append(v.time(args.steps))
        print(
            f"round {r + 1}: "
            + ", ".join(f"K={v.label} {1 / times[v.label][-1]:.2f}" for v in variants)
            + " steps/s",
            flush=True,
        )
    flops = train_flops_per_token(spec.model, t)
    base = statistics.median(times["1"])
    rows = []
    print(
        "\n| K | steps/s | tokens/s | GFLOP/s | ratio to K=1 | max param diff |\n"
        "|---|---|---|---|---|---|"
    )
    for v in variants:
        dt = statistics.median(times[v.label])
        row = {
            "k": v.label,
            "steps_per_s": 1 / dt,
            "tokens_per_s": b * t / dt,
            "gflops": b * t * flops / dt / 1e9,
            "ratio": base / dt,
            "max_param_diff": diffs.get(v.k) if not v.resident else None,
        }
        rows.append(row)
        diff = "—" if row["max_param_diff"] is None else f"{row['max_param_diff']:.1e}"
        print(
            f"| {v.label} | {row['steps_per_s']:.2f} | {row['tokens_per_s']:,.0f} | "
            f"{row['gflops']:.1f} | {row['ratio']:.2f}x | {diff} |"
        )
    if ks:
        kmax = max(ks)
        inner = statistics.median(times[str(kmax)])
        print(
            f"\nshare of a K=1 step outside the jitted computation (1 - t[K={kmax}] / t[K=1]): "
            f"{1 - inner / base:.0%}"
        )
        if "1 resident" in times:
            res = statistics.median(times["1 resident"])
            print(
                "of which the host batch transfer (1 - t[K=1 resident] / t[K=1]): "
                f"{1 - res / base:.0%}"
            )
    if args.loop:
        rows += loop_table(args, data_dir)
    return rows


def loop_table(args: argparse.Namespace, data_dir: str) -> list[dict[str, Any]]:
    """Times loop.train with steps_per_call 1 and --loop_k in alternating rounds; prints and
    returns the medians."""
    ks = [1, args.loop_k]
    got: dict[int, list[dict[str, float]]] = {k: [] for k in ks}
    for r in range(args.rounds):
        for k in ks if r % 2 == 0 else ks[::-1]:
            got[k].append(time_loop(args.loop, k, data_dir))
        print(
            f"loop round {r + 1}: "
            + ", ".join(
                f"steps_per_call={k} {got[k][-1]['tokens_per_s']:,.0f} tokens/s "
                f"({got[k][-1]['wall_s']:.1f} s)"
                for k in ks
            ),
            flush=True,
        )
    rows = []
    data = loop_config(args.loop, 1, data_dir).data
    per_step = data.batch_size * data.seq_len
    base = statistics.median(x["tokens_per_s"] for x in got[1])
    print(
        f"\nloop.train, {args.loop} steps (median of {args.rounds} rounds)\n"
        "| steps_per_call | tokens/s (logged) | steps/s | ratio | wall s |\n|---|---|---|---|---|"
    )
    for k in ks:
        tps = statistics.median(x["tokens_per_s"] for x in got[k])
        wall = statistics.median(x["wall_s"] for x in got[k])
        rows.append({"loop_k": k, "tokens_per_s": tps, "wall_s": wall, "ratio": tps / base})
        print(f"| {k} | {tps:,.0f} | {tps / per_step:.2f} | {tps / base:.2f}x | {wall:.1f} |")
    return rows


if __name__ == "__main__":
    main()
