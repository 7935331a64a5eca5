"""Benchmark: training-step throughput and model-FLOPs utilisation (MFU) of jaxknow.

Default shape: the bioS paper model (GPT-2 small with rotary, 12x12x768, vocabulary 50257),
context 512, batch 96, bf16 compute, fp32 master weights, AdamW — the shape of the PyTorch
reference `torch_gpt2_baseline.py`. Each `--variant` is one lever measured on its own, on top
of the base (`--preset` + `--model`): fields of the model config (e.g. `scan_layers=true`,
`remat=dots`), `batch`, `seq_len`, `loss_chunk`, `grad_accum`, and the levers that must be
set before jax starts, measured in a subprocess: `cpu_devices=N` (XLA host devices) and
`xla_flags=...` (extra XLA_FLAGS). `--cpu_devices 1,2` and `--xla_flags F` add such variants.

    python benchmarks/bench_train.py [--preset gpt2-small-rope] [--batch 96] [--seq_len 512]
        [--variant remat=dots] [--variant loss_chunk=128] [--variant attention_impl=xla]
        [--torch_baseline gpu|cpu|PATH] [--repeats R] [--ref COMMIT] [--json OUT]

The CPU comparison of the performance issue, side by side in one command (the quickstart's
shape against HF GPT-2 in PyTorch eager, `shared/bench/torch_cpu_small.py`):

    python benchmarks/bench_train.py --quickstart --torch_baseline cpu --repeats 5 \\
        --cpu_devices 1,2 --ref a57f7a5

The pretrained shape of the pretrained-models work (SmolLM2-135M, random weights) against
transformers' LlamaForCausalLM in PyTorch eager (`shared/bench/torch_cpu_llama.py`), full
finetuning or, with `--lora 64`, rank-64 rsLoRA (alpha 16) on all seven projections on both
sides; a CPU anchor also measures this machine's fp32 matmul limit each round, and GFLOP/s
follow the anchor's accounting (`anchor_flops_per_token`):

    python benchmarks/bench_train.py --preset smollm2-135m --batch 16 --seq_len 64 \\
        --dtype float32 --torch_baseline cpu-llama --repeats 2 [--lora 64]

`--repeats R` alternates the runs (torch, then every variant) R times and prints each round's
ratios and their median, which is robust to load drifting on a shared machine. `--ref COMMIT`
adds the base config run with jaxknow exported from that commit (same machine, same run);
`--json OUT` records the figures and `--compare OLD.json` prints the ratio to a recorded run.
Compile time is measured with the persistent compilation cache off (`--compile_cache` keeps
it). MFU = tokens/s x (6N + 12·L·d·T) / peak, with the peak known for H100/H200/A100/L4 and
TPU chips (blank on CPU). Random tokens, random weights; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# A worker benchmarking a recorded commit imports jaxknow from that commit's export.
sys.path.insert(0, os.environ.get("JAXKNOW_BENCH_ROOT") or str(REPO))

RUN_FIELDS = ("batch", "seq_len", "loss_chunk", "grad_accum", "lora")
ENV_FIELDS = ("cpu_devices", "xla_flags")
#: The quickstart's model shape (GPT-2 style, learned positions, as the PyTorch CPU anchor).
QUICKSTART = {
    "preset": "tiny",
    "batch": 64,
    "seq_len": 128,
    "dtype": "float32",
    "model": "d_model=128,d_ff=512,n_layers=4,n_heads=4,vocab_size=1024",
}
WORKER_TAG = "@@bench "


def parse_variant(text: str) -> dict[str, Any]:
    """Returns the overrides of a variant "k=v,k=v" (ints, floats, booleans parsed); the value
    of `xla_flags` is kept as text (several flags separated by spaces)."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise SystemExit(f"--variant {text!r}: {part!r} is not KEY=VALUE")
        k, v = part.split("=", 1)
        if k == "xla_flags":
            out[k] = v
            continue
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


def find_shared_script(name: str) -> Path | None:
    """Returns `shared/bench/NAME` in the checkout or the nearest folder above it (a git
    worktree sits below the main checkout's parent), or None."""
    for d in [REPO, *REPO.parents]:
        p = d / "shared" / "bench" / name
        if p.is_file():
            return p
    return None


TORCH_SCRIPTS = {
    "cpu": "torch_cpu_small.py",
    "cpu-llama": "torch_cpu_llama.py",
    "gpu": "torch_gpt2_baseline.py",
}


def resolve_torch_script(arg: str) -> tuple[Path, str]:
    """Returns (script path, "cpu" | "cpu-llama" | "gpu") for `--torch_baseline` (one of
    TORCH_SCRIPTS' keys or a path; a path's kind is told by its name)."""
    names = TORCH_SCRIPTS
    if arg in names:
        path = find_shared_script(names[arg])
        if path is None:
            raise SystemExit(
                f"--torch_baseline={arg}: shared/bench/{names[arg]} not found "
                f"in {REPO} or any folder above it; pass its path"
            )
        return path, arg
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"--torch_baseline={arg}: no such file")
    if "cpu" not in path.name:
        return path, "gpu"
    return path, "cpu-llama" if "llama" in path.name else "cpu"


@dataclasses.dataclass
class Variant:
    """One row of the benchmark: model fields, run shape, and levers set before jax starts."""

    label: str
    preset: str
    fields: dict[str, Any]
    run: dict[str, int]
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    root: str | None = None  # import jaxknow from this export of a recorded commit

    @property
    def needs_process(self) -> bool:
        """Whether the variant must run in its own process (env levers or another commit)."""
        return bool(self.env) or self.root is not None

    def model_config(self) -> Any:
        """Returns the variant's ModelConfig."""
        from jaxknow.model.config import preset

        return preset(self.preset, **self.fields)


def make_variant(label: str, text: str, args: argparse.Namespace) -> Variant:
    """Returns the Variant of `--variant text` on top of the base config of `args`."""
    over = {**parse_variant(args.model or ""), **parse_variant(text)}
    run = {
        "batch": args.batch,
        "seq_len": args.seq_len,
        "loss_chunk": args.loss_chunk,
        "grad_accum": args.grad_accum,
        "lora": args.lora,
    }
    run.update({k: over.pop(k) for k in list(over) if k in RUN_FIELDS})
    env = {k: over.pop(k) for k in list(over) if k in ENV_FIELDS}
    fields = {
        "dtype": args.dtype,
        "remat": args.remat,
        "max_seq_len": max(run["seq_len"], 512),
        **over,
    }
    return Variant(label, args.preset, fields, run, env)


@dataclasses.dataclass
class Prepared:
    """A compiled train step with its state and batch, ready to be timed."""

    compiled: Any
    state: Any
    batch: dict[str, Any]
    cfg: Any
    run: dict[str, int]
    n_devices: int
    params_m: float
    compile_s: float
    compiled_bytes: int | None
    adapter_m: float = 0.0  # LoRA adapter parameters (millions); 0: full finetuning


def lora_config(cfg: Any, rank: int) -> tuple[Any, Any]:
    """Returns (cfg with its adapter scale, LoraConfig) for rank-`rank` adapters with alpha 16,
    rsLoRA, on every linear projection of the blocks: the torch anchor's peft LoRA."""
    from jaxknow.model.lora import LoraConfig, all_linear_targets

    lora = LoraConfig(rank=rank, alpha=16.0, rslora=True, targets=all_linear_targets(cfg.mlp))
    return cfg.replace(lora_scale=lora.scale), lora


def initial_state(
    cfg: Any, lora_rank: int, mesh: Any, seed: int, tx: Any, no_decay: tuple[str, ...]
) -> tuple[Any, Any, Any, int, int]:
    """Returns (cfg, state, state shardings, base parameter count, adapter parameter count):
    random weights laid out as the trainer lays them out; with `lora_rank` > 0 the base is
    frozen and only the adapters train (`train.trainable = "lora"`)."""
    import jax

    from jaxknow.model.params import count_params, flatten, param_specs

    try:
        from jaxknow.model.sharded import init_sharded_params
    except ImportError:  # a --ref commit from before the module moved
        from jaxknow.train.setup import init_sharded_params
    from jaxknow.train.setup import sharded_state

    specs = param_specs(cfg)
    n_base, n_adapter = count_params(specs), 0
    is_trainable: Any = None
    if lora_rank > 0:
        from jaxknow.model.lora import full_specs, is_lora_path, lora_specs

        cfg, lora = lora_config(cfg, lora_rank)
        n_adapter = count_params(lora_specs(cfg, lora))
        specs, is_trainable = full_specs(cfg, lora), is_lora_path
    params = init_sharded_params(specs, jax.random.key(seed), cfg.storage_dtype, mesh)
    frozen: Any = {}
    if is_trainable is not None:
        from jaxknow.train.state import split_params

        params, frozen = split_params(params, is_trainable)
    kw = {}
    try:  # a --ref commit from before one stacked layout: layers stacked when scanned
        from jaxknow.train.state import stacks_layers

        kw = {"stack": stacks_layers(cfg, params, frozen, no_decay)}
    except ImportError:  # one layout (params are stacked already), or before stacking
        pass
    state, sh = sharded_state(params, frozen, flatten(specs), tx, mesh, **kw)
    return cfg, state, sh, n_base, n_adapter


def anchor_flops_per_token(cfg: Any, seq_len: int, n_base: float, n_adapter: float) -> float:
    """Returns training FLOPs per token as the torch anchors count them: 6 x parameters for
    full finetuning, 4 x frozen + 6 x adapter parameters under LoRA (no weight gradients of
    the frozen base), plus 12·L·d·T for attention scores and values."""
    attn = 12.0 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len
    if n_adapter:
        return 4.0 * n_base + 6.0 * n_adapter + attn
    return 6.0 * n_base + attn


def prepare_variant(
    cfg: Any,
    run: dict[str, int],
    mesh_shape: tuple[int, int, int],
    seed: int,
    optim_config: Any = None,
) -> Prepared:
    """Returns the compiled, sharded train step of `cfg` at `run`'s batch shape, with a fresh
    state and a random batch (the compile time is measured). `optim_config` (an OptimConfig;
    default AdamW at 3e-4) sets the optimizer."""
    import jax
    import jax.numpy as jnp

    from jaxknow.parallel.mesh import make_mesh
    from jaxknow.parallel.rules import DEFAULT_RULES, Sharder
    from jaxknow.train import optim
    from jaxknow.train.loop import batch_shardings
    from jaxknow.train.step import train_step

    mesh = make_mesh(*mesh_shape)
    b, t = run["batch"], run["seq_len"]
    ocfg = optim_config or optim.OptimConfig(lr=3e-4, warmup_steps=2, total_steps=1000)
    tx, sched = optim.make_optimizer(ocfg, cfg), optim.make_schedule(ocfg)
    cfg, state, sh, n_base, n_adapter = initial_state(
        cfg, int(run.get("lora") or 0), mesh, seed, tx, ocfg.no_decay
    )
    bsh = batch_shardings(mesh, DEFAULT_RULES, b, t)
    tokens = jax.random.randint(
        jax.random.key(seed + 1), (b, t + 1), 0, cfg.vocab_size, dtype=jnp.int32
    )
    batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": jnp.ones((b, t), jnp.float32),
        "segment_ids": jnp.ones((b, t), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    }
    batch = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}
    step = jax.jit(
        functools.partial(
            train_step,
            cfg=cfg,
            tx=tx,
            schedule=sched,
            sharder=Sharder(mesh),
            grad_accum=run["grad_accum"],
            loss_chunk=run["loss_chunk"],
        ),
        in_shardings=(sh, bsh),
        out_shardings=(sh, None),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    compiled_bytes = (
        (
            int(ma.argument_size_in_bytes)
            + int(ma.temp_size_in_bytes)
            + int(ma.output_size_in_bytes)
            - int(ma.alias_size_in_bytes)
        )
        if ma
        else None
    )
    return Prepared(
        compiled,
        state,
        batch,
        cfg,
        dict(run),
        mesh.devices.size,
        n_base / 1e6,
        compile_s,
        compiled_bytes,
        n_adapter / 1e6,
    )


def time_steps(p: Prepared, steps: int, warmup: int) -> dict[str, Any]:
    """Runs `warmup` then `steps` timed steps of a prepared variant (its state advances);
    returns {tokens_per_s, ms_per_step, mfu, peak_bytes, loss}."""
    import jax

    from jaxknow.model.flops import peak_flops

    m = None
    for _ in range(warmup):
        p.state, m = p.compiled(p.state, p.batch)
    if m is not None:
        jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        p.state, m = p.compiled(p.state, p.batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    b, t = p.run["batch"], p.run["seq_len"]
    tok_s = b * t / dt
    flops = anchor_flops_per_token(p.cfg, t, p.params_m * 1e6, p.adapter_m * 1e6)
    peak = peak_flops()
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "tokens_per_s": tok_s,
        "ms_per_step": dt * 1e3,
        "mfu": tok_s * flops / (peak * p.n_devices) if peak else None,
        "gflops": tok_s * flops / 1e9,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "loss": float(m["loss"]),
    }


def bench_variant(
    base: Any,
    run: dict[str, int],
    mesh_shape: tuple[int, int, int],
    steps: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """Returns {params_m, tokens_per_s, ms_per_step, mfu, peak_bytes, compiled_bytes,
    compile_s, loss} of one variant (compiled and timed in this process)."""
    p = prepare_variant(base, run, mesh_shape, seed)
    out = time_steps(p, steps, warmup)
    return {
        "params_m": p.params_m,
        "compiled_bytes": p.compiled_bytes,
        "compile_s": p.compile_s,
        **out,
    }


class InProcess:
    """Runs a variant in this process: `start` compiles, `window` times, `close` frees."""

    def __init__(self, v: Variant, args: argparse.Namespace, mesh: tuple[int, int, int]):
        self.v, self.args, self.mesh = v, args, mesh
        self.p: Prepared | None = None

    def start(self) -> dict[str, Any]:
        """Compiles the step; returns {params_m, compile_s, compiled_bytes, n_devices}."""
        self.p = prepare_variant(self.v.model_config(), self.v.run, self.mesh, self.args.seed)
        return {
            "params_m": self.p.params_m,
            "compile_s": self.p.compile_s,
            "compiled_bytes": self.p.compiled_bytes,
            "n_devices": self.p.n_devices,
            **describe_device(),
        }

    def window(self) -> dict[str, Any]:
        """Times one window of steps."""
        assert self.p is not None
        return time_steps(self.p, self.args.steps, self.args.warmup)

    def close(self) -> None:
        """Drops the state and the compiled step."""
        self.p = None


def describe_device() -> dict[str, Any]:
    """Returns {device, device_count, backend, jax} of this process (starts the backend)."""
    import jax

    return {
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def device_line(info: dict[str, Any]) -> str:
    """Returns "device: KIND xN (backend), jax V" from describe_device()'s fields."""
    return (
        f"device: {info['device']} x{info['device_count']} ({info['backend']}), jax {info['jax']}"
    )


def worker_env(v: Variant) -> dict[str, str]:
    """Returns the environment of a variant's worker process (XLA_FLAGS with its host device
    count and extra flags; PYTHONPATH of a recorded commit's export)."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if "cpu_devices" in v.env:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", flags)
        flags += f" --xla_force_host_platform_device_count={int(v.env['cpu_devices'])}"
    if v.env.get("xla_flags"):
        flags += " " + str(v.env["xla_flags"])
    env["XLA_FLAGS"] = " ".join(flags.split())
    if v.root:
        env["JAXKNOW_BENCH_ROOT"] = v.root
        env["PYTHONPATH"] = v.root + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Worker:
    """Runs a variant in a subprocess (`bench_train.py --worker`) that compiles once and times
    a window of steps each time it is asked, so variants can alternate with other runs."""

    def __init__(self, v: Variant, args: argparse.Namespace, mesh: tuple[int, int, int]):
        self.v = v
        self.spec = {
            "variant": dataclasses.asdict(v),
            "mesh": list(mesh),
            "steps": args.steps,
            "warmup": args.warmup,
            "seed": args.seed,
            "compile_cache": args.compile_cache,
        }
        self.proc: subprocess.Popen | None = None
        self.log: Any = None

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(WORKER_TAG):
                return json.loads(line[len(WORKER_TAG) :])
        self.log.seek(0)
        tail = "\n".join(self.log.read().strip().splitlines()[-15:])
        raise RuntimeError(f"variant {self.v.label!r}: worker exited ({self.proc.wait()}):\n{tail}")

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self) -> dict[str, Any]:
        """Starts the worker and waits for its compile; returns {params_m, compile_s, ...}.
        Workers start one at a time, so compiles (and accelerator memory) do not overlap."""
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(self.spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=worker_env(self.v),
            cwd=str(REPO),
        )
        return self._read()

    def window(self) -> dict[str, Any]:
        """Times one window of steps in the worker."""
        return self._ask("run")

    def close(self) -> None:
        """Stops the worker."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.close()  # end of input: the worker exits
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.proc = None


def worker_main(spec_json: str) -> None:
    """The `--worker` side: compiles the variant, prints its figures after each "run" line
    read from stdin, exits at the end of its input."""
    spec = json.loads(spec_json)
    import jax

    if not spec["compile_cache"]:
        jax.config.update("jax_enable_compilation_cache", False)
    v = Variant(**spec["variant"])
    p = prepare_variant(v.model_config(), v.run, tuple(spec["mesh"]), spec["seed"])

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(WORKER_TAG + json.dumps(obj) + "\n")
        sys.stdout.flush()

    emit(
        {
            "params_m": p.params_m,
            "compile_s": p.compile_s,
            "compiled_bytes": p.compiled_bytes,
            "n_devices": p.n_devices,
            **describe_device(),
        }
    )
    for line in sys.stdin:
        if line.strip() != "run":
            break
        emit(time_steps(p, spec["steps"], spec["warmup"]))


def run_torch_anchor(script: str | Path, argv: list[str]) -> dict[str, float | None]:
    """Runs a PyTorch reference script with `argv`; returns the {tokens_per_s, gflops} it
    prints (None where it fails or prints none)."""
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "tokens/s" in ln] or out.strip().splitlines()
    print("  torch: " + (lines[-1] if lines else "(no output)"), flush=True)
    found = re.search(r"([\d,]+) tokens/s", out)
    if proc.returncode or not found:
        print(f"torch baseline failed (exit {proc.returncode})")
        return {"tokens_per_s": None, "gflops": None}
    gf = re.search(r"([\d.]+) GFLOP/s", out)
    return {
        "tokens_per_s": float(found.group(1).replace(",", "")),
        "gflops": float(gf.group(1)) if gf else None,
    }


def run_torch_baseline(
    script: str | Path, batch: int, extra: list[str] | None = None
) -> float | None:
    """Runs a PyTorch reference script and returns the tokens/s it prints (None when it
    fails). `extra` replaces the positional batch argument of the GPU script (CPU script)."""
    argv = [str(a) for a in extra] if extra is not None else [str(batch)]
    return run_torch_anchor(script, argv)["tokens_per_s"]


def torch_cpu_args(cfg: Any, run: dict[str, int], steps: int, compile_: bool) -> list[str]:
    """Returns the flags of `torch_cpu_small.py` for the shape of `cfg` at `run`."""
    if cfg.d_ff != 4 * cfg.d_model or cfg.pos_embedding != "learned":
        print(
            f"note: the torch anchor is GPT-2 (learned positions, d_ff = 4 d); jaxknow has "
            f"pos_embedding={cfg.pos_embedding}, d_ff={cfg.d_ff}, d_model={cfg.d_model}"
        )
    return shape_flags(cfg, run, steps) + (["--compile"] if compile_ else [])


def shape_flags(cfg: Any, run: dict[str, int], steps: int) -> list[str]:
    """Returns the shape flags the CPU anchors share (batch, seq, d, layers, heads, vocab,
    steps)."""
    out = [
        "--batch",
        run["batch"],
        "--seq",
        run["seq_len"],
        "--d",
        cfg.d_model,
        "--layers",
        cfg.n_layers,
        "--heads",
        cfg.n_heads,
        "--vocab",
        cfg.vocab_size,
        "--steps",
        steps,
    ]
    return [str(x) for x in out]


def torch_llama_args(cfg: Any, run: dict[str, int], steps: int, compile_: bool) -> list[str]:
    """Returns the flags of `torch_cpu_llama.py` (transformers' LlamaForCausalLM, tied
    embeddings; peft LoRA with `run["lora"]` > 0) for the shape of `cfg` at `run`."""
    if cfg.mlp != "swiglu" or cfg.pos_embedding != "rope" or not cfg.tie_embeddings:
        print(
            f"note: the torch anchor is Llama (rope, swiglu, tied embeddings); jaxknow has "
            f"pos_embedding={cfg.pos_embedding}, mlp={cfg.mlp}, tie={cfg.tie_embeddings}"
        )
    out = shape_flags(cfg, run, steps) + ["--kv_heads", str(cfg.kv_heads), "--ff", str(cfg.d_ff)]
    out += ["--lora", str(run.get("lora") or 0)]
    return out + (["--compile"] if compile_ else [])


def _best_dot_seconds(rows: int, k: int, n: int, reps: int) -> float:
    """Returns the best of `reps` timings of a jitted float32 [rows, k] x [k, n] dot (jax, its
    first device), after one untimed call."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (rows, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_limit_gflops(n: int = 2048, reps: int = 5) -> float:
    """Returns this machine's fp32 matmul limit: GFLOP/s of the best of `reps` jitted n x n
    float32 matmuls with jax on its first device."""
    return 2.0 * n**3 / _best_dot_seconds(n, n, n, reps) / 1e9


def projection_rate_gflops(cfg: Any, rows: int, reps: int = 3) -> float:
    """Returns the fp32 GFLOP/s of XLA's dots at one layer's projection shapes of `cfg` with
    `rows` tokens (q, k, v, o, and the MLP's: gate / up and down), weighted by their FLOPs:
    what the matmul kernels themselves deliver at these shapes, before any other op (best of
    `reps` per shape, jax on the first device)."""
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    mlp = [(d, cfg.d_ff)] * (1 if cfg.mlp == "gelu" else 2) + [(cfg.d_ff, d)]
    shapes = [(d, q), (d, kv), (d, kv), (q, d)] + mlp
    flops = sum(2.0 * rows * k * n for k, n in shapes)
    return flops / sum(_best_dot_seconds(rows, k, n, reps) for k, n in shapes) / 1e9


@dataclasses.dataclass
class Anchor:
    """The PyTorch anchor, run once per round; on a CPU the fp32 matmul limit is measured
    beside it in each round (`matmul_limit_gflops`)."""

    script: Path | None = None
    kind: str | None = None
    argv: list[str] | None = None
    tps: list[float | None] = dataclasses.field(default_factory=list)
    gflops: list[float | None] = dataclasses.field(default_factory=list)
    limits: list[float] = dataclasses.field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: Variant) -> Anchor:
        """Returns the anchor of `--torch_baseline` for the base variant's shape (none
        without the flag)."""
        if not args.torch_baseline:
            return cls()
        script, kind = resolve_torch_script(args.torch_baseline)
        make = {"cpu": torch_cpu_args, "cpu-llama": torch_llama_args}.get(kind)
        if make is None:
            return cls(script, kind, [str(base.run["batch"])])
        cfg = base.model_config()
        return cls(script, kind, make(cfg, base.run, args.torch_steps, args.torch_compile))

    def round(self) -> None:
        """Runs the anchor once (and measures the matmul limit on a CPU)."""
        if self.script is None:
            return
        out = run_torch_anchor(self.script, self.argv or [])
        self.tps.append(out["tokens_per_s"])
        self.gflops.append(out["gflops"])
        if (self.kind or "").startswith("cpu"):
            self.limits.append(matmul_limit_gflops())
            print(f"  matmul limit (jax, fp32 2048²): {self.limits[-1]:.1f} GFLOP/s", flush=True)

    def summary(self) -> str:
        """Returns "median GFLOP/s of the anchor and the matmul limit" for the table."""
        parts = []
        g, lim = median(self.gflops), median(self.limits)
        if g is not None:
            parts.append(f"{g:.1f} GFLOP/s" + (f" ({g / lim:.0%} of the limit)" if lim else ""))
        if lim:
            parts.append(f"fp32 matmul limit {lim:.1f} GFLOP/s (median of {len(self.limits)})")
        return "; ".join(parts)


def export_commit(ref: str) -> Path:
    """Returns a temporary folder holding `jaxknow/` and `launch/` as of git commit `ref`."""
    dest = Path(tempfile.mkdtemp(prefix="bench_ref_"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "jaxknow", "launch"], capture_output=True
    )
    if archive.returncode:
        raise SystemExit(f"--ref {ref}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def median(xs: list[float]) -> float | None:
    """Returns the median of the non-None values (None when there are none)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def build_variants(args: argparse.Namespace) -> list[Variant]:
    """Returns the rows to measure: a recorded commit (with --ref), the base, each
    --cpu_devices and --xla_flags value, each --variant."""
    rows: list[Variant] = []
    if args.ref:
        v = make_variant(f"ref {args.ref}", "", args)
        v.root = str(export_commit(args.ref))
        rows.append(v)
    rows.append(make_variant("base", "", args))
    for n in filter(None, (args.cpu_devices or "").split(",")):
        rows.append(make_variant(f"cpu_devices={n}", f"cpu_devices={n}", args))
    for f in args.xla_flags:
        v = make_variant(f"xla_flags={f}", "", args)
        v.env["xla_flags"] = f
        rows.append(v)
    rows += [make_variant(t, t, args) for t in args.variant]
    return rows


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """Adds the flags of the base config: preset, model fields, shape, dtype, remat, loss
    chunking, gradient accumulation, LoRA rank."""
    ap.add_argument("--preset", default="gpt2-small-rope")
    ap.add_argument("--model", default="", help="k=v,... model fields of the base config")
    ap.add_argument(
        "--quickstart",
        action="store_true",
        help="the quickstart's shape: " + " ".join(f"--{k} {v}" for k, v in QUICKSTART.items()),
    )
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--loss_chunk", type=int, default=0)
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument(
        "--lora",
        type=int,
        default=0,
        help="LoRA rank R: adapters (alpha 16, rsLoRA) on every linear projection, base frozen",
    )


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """Adds the flags of the timed run (mesh, steps, warm-up, seed) and of the variants
    measured beside the base (--variant, --cpu_devices, --xla_flags)."""
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="k=v,... overriding model fields, batch/seq_len/loss_chunk/grad_accum, "
        "cpu_devices, xla_flags",
    )
    ap.add_argument(
        "--cpu_devices", default="", help="comma list: one variant per XLA host device count"
    )
    ap.add_argument(
        "--xla_flags",
        action="append",
        default=[],
        help="one variant with these extra XLA_FLAGS (repeatable)",
    )


def add_torch_arguments(ap: argparse.ArgumentParser) -> None:
    """Adds the flags of the PyTorch anchor and of the alternating rounds (--repeats)."""
    ap.add_argument(
        "--torch_baseline",
        default=None,
        help="gpu, cpu, cpu-llama (shared/bench/torch_{gpt2_baseline,cpu_small,cpu_llama}.py) "
        "or a path",
    )
    ap.add_argument("--torch_compile", action="store_true", help="CPU anchor: torch.compile")
    ap.add_argument("--torch_steps", type=int, default=10, help="CPU anchor: timed steps")
    ap.add_argument(
        "--repeats", type=int, default=1, help="alternate torch and every variant this many times"
    )


def add_record_arguments(ap: argparse.ArgumentParser) -> None:
    """Adds the flags of the comparison with a recorded commit (--ref), process isolation, the
    compilation cache, and the figures' records (--json, --compare)."""
    ap.add_argument(
        "--ref", default=None, help="git commit: add the base config run with that commit's jaxknow"
    )
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="every variant in its own process (its own peak memory; on a GPU, "
        "with --repeats 1 only one holds memory at a time)",
    )
    ap.add_argument(
        "--compile_cache",
        action="store_true",
        help="keep the persistent compilation cache (compile times then lie)",
    )
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--compare", default=None, help="a --json file of an earlier run")


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser (the module docstring as its description)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_model_arguments(ap)
    add_run_arguments(ap)
    add_torch_arguments(ap)
    add_record_arguments(ap)
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Returns the parsed command line; outside `--worker`, `--quickstart` fills the shape
    flags left at their defaults and `--repeats` must be at least 1."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.worker is not None:
        return args
    if args.quickstart:
        for k, v in QUICKSTART.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.repeats < 1:
        raise SystemExit(f"--repeats={args.repeats}: must be at least 1")
    return args


def configure_jax(compile_cache: bool) -> None:
    """Imports jax and `launch` (CPU device count, compilation cache); turns the persistent
    compilation cache off unless `compile_cache`."""
    import jax

    import launch  # noqa: F401  (CPU device count, compilation cache)

    if not compile_cache:
        jax.config.update("jax_enable_compilation_cache", False)


def make_runners(
    variants: list[Variant], args: argparse.Namespace, mesh_shape: tuple[int, ...]
) -> tuple[list[Any], bool]:
    """Returns (one runner per variant, whether they run in their own processes). When any
    variant needs its own process, all get one: the same conditions for every row, and this
    process never starts the backend (on a GPU it would hold the memory)."""
    isolate = args.isolate or any(v.needs_process for v in variants)
    runner = Worker if isolate else InProcess
    return [runner(v, args, mesh_shape) for v in variants], isolate


@dataclasses.dataclass
class Rounds:
    """The alternating rounds: the anchor then a window of every variant, `repeats` times
    (every variant compiled first when `repeats` > 1; with one round, each variant is started,
    timed and closed in turn). Keeps what each variant measured and why it failed."""

    variants: list[Variant]
    runners: list[Any]
    anchor: Anchor
    mesh_shape: tuple[int, ...]
    isolate: bool
    repeats: int
    json_path: str | None = None
    infos: list[dict[str, Any] | None] = dataclasses.field(default_factory=list)
    windows: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)
    failed: dict[int, str] = dataclasses.field(default_factory=dict)
    shown: bool = False

    def __post_init__(self) -> None:
        """Starts with no figures: one empty slot per runner."""
        self.infos = [None] * len(self.runners)
        self.windows = [[] for _ in self.runners]

    @property
    def together(self) -> bool:
        """Whether every variant is compiled first and the variants alternate (repeats > 1)."""
        return self.repeats > 1

    def attempt(self, i: int, fn: Any) -> Any:
        """Runs fn(); a failing variant is reported and dropped, the others go on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 (a lever that fails must not stop the rest)
            self.failed[i] = f"{type(e).__name__}: {e}"
            print(f"  variant {self.runners[i].v.label!r} failed: {self.failed[i]}", flush=True)
            self.runners[i].close()
            return None

    def show(self, info: dict[str, Any] | None) -> None:
        """Prints the device line once, from the first isolated variant that started."""
        if self.isolate and info and not self.shown:
            self.shown = True
            print(
                device_line(info) + f", mesh {self.mesh_shape} (each variant in its own process)",
                flush=True,
            )

    def measured(self) -> list[int]:
        """Returns the indices of the variants with figures and no failure."""
        return [j for j in range(len(self.runners)) if self.windows[j] and j not in self.failed]

    def figures(
        self,
    ) -> tuple[list[Variant], list[dict[str, Any] | None], list[list[dict[str, Any]]]]:
        """Returns (variants, infos, windows) of the measured variants."""
        done = self.measured()
        return (
            [self.variants[j] for j in done],
            [self.infos[j] for j in done],
            [self.windows[j] for j in done],
        )

    def rows(self) -> list[dict[str, Any]]:
        """Returns summarize()'s rows of the measured variants."""
        return summarize(*self.figures(), self.anchor.tps)

    def record(self, path: str) -> None:
        """Writes the figures of the variants measured so far (and the failures) to `path`."""
        dump(path, *self.figures(), self.anchor.tps, self.anchor.script, self.failed)

    def compile_all(self) -> None:
        """Starts (compiles) every variant, one at a time."""
        for i, r in enumerate(self.runners):
            self.infos[i] = self.attempt(i, r.start)
            self.show(self.infos[i])
            if i not in self.failed:
                print(f"  compiled {r.v.label}: {self.infos[i]['compile_s']:.1f} s", flush=True)

    def measure(self, i: int) -> str | None:
        """Times one window of variant `i` (started before and closed after when the variants
        do not alternate); returns its part of the round's line, None when it failed."""
        r = self.runners[i]
        if not self.together and i not in self.failed:
            self.infos[i] = self.attempt(i, r.start)
            self.show(self.infos[i])
        w = self.attempt(i, r.window) if i not in self.failed else None
        if w is None:
            return None
        self.windows[i].append(w)
        if not self.together:
            r.close()
            if self.json_path:  # what is done survives a time limit
                self.record(self.json_path)
        tps = self.anchor.tps
        ratio = f" ({w['tokens_per_s'] / tps[-1]:.2f}x)" if tps and tps[-1] else ""
        return f"{r.v.label} {w['tokens_per_s']:,.0f}{ratio}"

    def run_round(self, rnd: int) -> None:
        """Runs the anchor, then a window of every variant; prints the round's line when the
        variants alternate."""
        self.anchor.round()
        parts = [p for i in range(len(self.runners)) if (p := self.measure(i)) is not None]
        if self.together:
            tps = self.anchor.tps
            tt = f"torch {tps[-1]:,.0f} | " if tps and tps[-1] else ""
            print(f"  round {rnd + 1}: {tt}" + " | ".join(parts), flush=True)

    def run(self) -> None:
        """Runs every round (compiling every variant first when they alternate)."""
        if self.together:
            self.compile_all()
        for rnd in range(self.repeats):
            self.run_round(rnd)

    def close(self) -> None:
        """Stops every runner and removes the recorded commit's export."""
        for r in self.runners:
            r.close()
        for v in self.variants:
            if v.root:  # the recorded commit's export
                shutil.rmtree(v.root, ignore_errors=True)


def report(rounds: Rounds, compare: str | None) -> dict[str, Any]:
    """Prints the table (with the ratio to the `--compare` record) and the failures, writes the
    `--json` record; returns {"torch", "rows", "failed", "anchor"}."""
    rows = rounds.rows()
    print_table(rows, rounds.anchor, compare=load_record(compare) if compare else None)
    for i, why in rounds.failed.items():
        print(f"FAILED {rounds.variants[i].label}: {why}")
    if rounds.json_path:
        rounds.record(rounds.json_path)
    if not rows:
        raise SystemExit("every variant failed")
    return {
        "torch": rounds.anchor.tps,
        "rows": rows,
        "failed": {rounds.variants[i].label: why for i, why in rounds.failed.items()},
        "anchor": {"gflops": rounds.anchor.gflops, "matmul_limit": rounds.anchor.limits},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints its table; returns {"torch": [...], "rows": [...]}."""
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return {}
    configure_jax(args.compile_cache)
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    variants = build_variants(args)
    anchor = Anchor.from_args(args, variants[1] if args.ref else variants[0])
    runners, isolate = make_runners(variants, args, mesh_shape)
    if not isolate:
        print(device_line(describe_device()) + f", mesh {mesh_shape}", flush=True)
    rounds = Rounds(variants, runners, anchor, mesh_shape, isolate, args.repeats, args.json)
    try:
        rounds.run()
    finally:
        rounds.close()
    return report(rounds, args.compare)


def dump(
    path: str,
    variants: list[Variant],
    infos: list[dict[str, Any] | None],
    windows: list[list[dict[str, Any]]],
    torch_tps: list[float | None],
    torch_script: Path | None,
    failed: dict[int, str] | None = None,
) -> None:
    """Writes the figures of the variants measured so far (and the failures) to `path`."""
    rows = summarize(variants, infos, windows, torch_tps) if variants else []
    info = next((i for i in infos if i), {})
    Path(path).write_text(
        json.dumps(
            {
                "torch": torch_tps,
                "torch_script": str(torch_script) if torch_script else None,
                "device": info.get("device"),
                "backend": info.get("backend"),
                "rows": rows,
                "failed": list((failed or {}).values()),
            },
            indent=1,
        )
    )


def summarize(
    variants: list[Variant],
    infos: list[dict[str, Any] | None],
    windows: list[list[dict[str, Any]]],
    torch_tps: list[float | None],
) -> list[dict[str, Any]]:
    """Returns one dict per variant: medians over the rounds, per-round ratios to torch and
    to the first row (the recorded commit with --ref, else the base)."""
    if not windows:
        return []  # every variant failed
    rows = []
    first = [w["tokens_per_s"] for w in windows[0]]
    for v, info, ws in zip(variants, infos, windows, strict=True):
        tps = [w["tokens_per_s"] for w in ws]
        vs_torch = [t / b if b else None for t, b in zip(tps, torch_tps, strict=False)]
        rows.append(
            {
                "label": v.label,
                "batch": v.run["batch"],
                "seq_len": v.run["seq_len"],
                **(info or {}),
                "tokens_per_s": median(tps),
                "tokens_per_s_rounds": tps,
                "ms_per_step": median([w["ms_per_step"] for w in ws]),
                "mfu": median([w["mfu"] for w in ws]),
                "gflops": median([w.get("gflops") for w in ws]),
                "peak_bytes": max([w["peak_bytes"] or 0 for w in ws]) or None,
                "loss": ws[-1]["loss"],
                "vs_torch_rounds": vs_torch,
                "vs_torch": median(vs_torch),
                "vs_first": median([t / f for t, f in zip(tps, first, strict=False)]),
            }
        )
    return rows


def print_gflops(rows: list[dict[str, Any]], limit: float | None) -> None:
    """Prints each row's GFLOP/s (the anchor's FLOP accounting) and its share of `limit`."""
    for r in rows:
        if r.get("gflops") is None:
            continue
        share = f" = {r['gflops'] / limit:.0%} of the fp32 matmul limit" if limit else ""
        print(f"  {r['label']}: {r['gflops']:.1f} GFLOP/s{share}")


def load_record(path: str) -> dict[str, float]:
    """Returns {label: tokens/s} of an earlier `--json` file."""
    try:
        data = json.loads(Path(path).read_text())
        return {r["label"]: r["tokens_per_s"] for r in data["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--compare {path}: not a bench_train --json file ({e})") from None


def print_table(
    rows: list[dict[str, Any]],
    anchor: Anchor | list[float | None],
    compare: dict[str, float] | None = None,
) -> None:
    """Prints the figures of every row (medians over the rounds); `anchor` is the torch
    anchor (or its tokens/s per round)."""
    if not isinstance(anchor, Anchor):
        anchor = Anchor(tps=list(anchor))
    width = max([34] + [len(r["label"]) for r in rows])
    good = [t for t in anchor.tps if t]
    if good:
        extra = anchor.summary()
        print(
            f"torch anchor: median {median(good):,.0f} tokens/s over {len(good)} run(s)"
            + (f", {extra}" if extra else "")
        )
    print_gflops(rows, median(anchor.limits))
    first = rows[0]["label"]
    print(
        f"{'variant':<{width}} {'params':>7} {'batch':>5} {'seq':>5} {'compile s':>9} "
        f"{'ms/step':>9} {'tokens/s':>11} {'MFU':>6} {'peak GiB':>9} {'vs torch':>8} "
        f"{'vs ' + first[:10]:>13}" + (f" {'vs --compare':>12}" if compare else "")
    )
    for r in rows:
        mem = r.get("peak_bytes") or r.get("compiled_bytes") or 0
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        vt = f"{r['vs_torch']:.2f}x" if r["vs_torch"] is not None else "-"
        cmp = ""
        if compare is not None:
            old = compare.get(r["label"])
            cmp = f" {r['tokens_per_s'] / old:>11.2f}x" if old else f" {'-':>12}"
        print(
            f"{r['label']:<{width}} {r.get('params_m', 0):>6.1f}M {r['batch']:>5} "
            f"{r['seq_len']:>5} {r.get('compile_s', 0):>9.1f} {r['ms_per_step']:>9.1f} "
            f"{r['tokens_per_s']:>11,.0f} {mfu:>6} {mem / 2**30:>9.2f} {vt:>8} "
            f"{r['vs_first']:>12.2f}x{cmp}   (loss {r['loss']:.3f})",
            flush=True,
        )
        if len(r["vs_torch_rounds"]) > 1:
            print(
                "    vs torch per round: "
                + ", ".join(f"{x:.2f}x" if x else "-" for x in r["vs_torch_rounds"])
            )


if __name__ == "__main__":
    main()
