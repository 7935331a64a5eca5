"""A per-device memory plan of a training step: parameters, gradients, optimizer state and
activations for a model, a mesh and a batch, computed from shapes alone (no devices needed).

Parameters and optimizer state are exact (the same sharding rules as training; the stacked
layers' leading axis is never sharded, so a layer takes the same bytes per device as it would
alone). Activations
are an estimate of what the backward pass keeps per token and layer for the chosen remat
policy, plus the float32 logits (or one chunk of them with `loss_chunk`); see
`activation_elements_per_token` for the accounting. Compare with XLA's own count with
`measured_step_memory` (compiled memory analysis) on any backend.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig, is_lora_path, lora_specs
from jaxknow.model.params import ParamSpec, flatten, param_specs
from jaxknow.parallel.rules import DEFAULT_RULES, DroppedAxis, Rules, dropped_axes, logical_to_spec

GiB = 2**30

# Memory per device of common accelerators (bytes).
DEVICE_MEMORY = {
    "H100-80GB": 80e9,
    "H200": 141e9,
    "A100-80GB": 80e9,
    "A100-40GB": 40e9,
    "TPU v4": 32 * GiB,
    "TPU v5e": 16 * GiB,
    "TPU v5p": 95 * GiB,
    "TPU v6e": 32 * GiB,
}


@dataclasses.dataclass(frozen=True)
class FakeMesh:
    """Just the axis sizes of a mesh (what the sharding rules need)."""

    shape: Mapping[str, int]


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of one training step's state and activations."""

    params: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    batch: float
    gathered: float  # FSDP: unsharded weights and gradients of the layers in flight
    n_params: int
    n_trainable: int
    mesh: dict[str, int]
    # mesh axes the rules ask for that do not divide a parameter dimension (one per kind)
    dropped: list[DroppedAxis] = dataclasses.field(default_factory=list)

    @property
    def state(self) -> float:
        """Returns bytes of parameters + optimizer state (what a checkpoint restores)."""
        return self.params + self.optimizer

    @property
    def total(self) -> float:
        """Returns the estimated peak bytes per device."""
        return self.params + self.grads + self.optimizer + self.temporaries + self.batch

    @property
    def temporaries(self) -> float:
        """Returns the step's working memory: gradients, activations, logits, FSDP buffers."""
        return self.grads + self.activations + self.logits + self.gathered

    def table(self) -> str:
        """Returns a plain-text table of the plan in GiB."""
        rows = [
            ("parameters", self.params),
            ("gradients", self.grads),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("logits / loss", self.logits),
            ("FSDP buffers", self.gathered),
            ("batch", self.batch),
            ("total (estimate)", self.total),
        ]
        out = [
            f"{self.n_params / 1e9:.3f} B parameters ({self.n_trainable / 1e9:.3f} B "
            f"trained), mesh {self.mesh}, per device:"
        ]
        out += [f"  {name:18s} {v / GiB:10.3f} GiB" for name, v in rows]
        fits = [k for k, cap in DEVICE_MEMORY.items() if self.total <= 0.9 * cap]
        out.append(f"  fits (90% of memory): {', '.join(fits) if fits else 'none listed'}")
        if self.dropped:
            out.append("  not sharded as the rules ask (a mesh axis does not divide the size):")
            out += [f"    {d}" for d in self.dropped]
        return "\n".join(out)


def _shard_factor(spec: ParamSpec, mesh: FakeMesh, rules: Rules) -> int:
    pspec = logical_to_spec(spec.axes, spec.shape, mesh, rules)  # type: ignore[arg-type]
    factor = 1
    for entry in pspec:
        for ax in entry if isinstance(entry, tuple) else (entry,):
            if ax is not None:
                factor *= mesh.shape[ax]
    return factor


def activation_elements_per_token(cfg: ModelConfig, remat: str) -> float:
    """Returns activation elements kept per token per layer for the backward pass.

    no remat: the block's inputs, norm outputs, q/k/v, attention output, MLP up/gate, the
    activation and its product (XLA keeps about these); "dots": matmul outputs only;
    "full": just the layer input (each layer recomputes itself in the backward pass).
    """
    d, f = cfg.d_model, cfg.d_ff
    q = cfg.n_heads * cfg.dim_per_head
    kv = 2 * cfg.kv_heads * cfg.dim_per_head
    gated = cfg.mlp in ("swiglu", "geglu")
    if remat == "full":
        return d
    if remat in ("dots", "dots_no_batch"):
        return q + kv + q + d + (2 * f if gated else f) + d
    return 4 * d + q + kv + q + (4 * f if gated else 2 * f)


def plan_memory(
    cfg: ModelConfig,
    mesh_shape: Mapping[str, int],
    batch: int,
    seq_len: int,
    *,
    lora: LoraConfig | None = None,
    trainable: str = "all",
    grad_accum: int = 1,
    loss_chunk: int = 0,
    rules: Rules = DEFAULT_RULES,
    flash_attention: bool | None = None,
    gathered_layers: int | None = None,
) -> MemoryPlan:
    """Returns the per-device MemoryPlan of a train step (AdamW: two moments per trained
    parameter, stored like the parameters).

    Without a flash kernel (`flash_attention=False`, the XLA path of CPUs and TPUs in
    jaxknow) the attention probabilities [heads, T, T] of every layer are kept for the
    backward pass. FSDP gathers each layer's weights (and its gradients before the
    reduce-scatter) at full size: `gathered_layers` layers are assumed in flight at once
    (default: 2 with a flash kernel — a latency-hiding scheduler's double buffering — else
    all layers, which is what XLA's CPU scheduler does).
    """
    if flash_attention is None:
        flash_attention = cfg.attention_impl == "cudnn" or (
            cfg.attention_impl is None and cfg.dtype != "float32"
        )
    if gathered_layers is None:
        gathered_layers = 2 if flash_attention else cfg.n_layers
    mesh = FakeMesh(dict(mesh_shape))
    specs = flatten(param_specs(cfg))
    if lora is not None and lora.enabled:
        specs.update(flatten(lora_specs(cfg, lora)))
    p_bytes = np.dtype(cfg.storage_dtype).itemsize
    a_bytes = np.dtype(cfg.compute_dtype).itemsize
    params = grads = 0.0
    n_params = n_trainable = 0
    per_device = _per_device(specs, mesh, rules, p_bytes)
    dropped: dict[tuple[str, int, str, int], DroppedAxis] = {}
    for path, spec in specs.items():
        for d in dropped_axes(spec.axes, spec.shape, mesh, rules):  # type: ignore[arg-type]
            dropped.setdefault(d.key, dataclasses.replace(d, where=path))
    for path, spec in specs.items():
        n = math.prod(spec.shape)
        per_dev = per_device[path]
        params += per_dev
        n_params += n
        trained = is_lora_path(path) if trainable == "lora" else True
        if trained:
            grads += per_dev
            n_trainable += n
    optimizer = 2 * grads
    if grad_accum > 1:
        grads *= 2  # the float32 accumulator next to the micro-batch gradient
    batch_shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    micro = batch / grad_accum / batch_shards
    tokens = micro * seq_len
    per_tok = activation_elements_per_token(cfg, cfg.remat)
    tensor = max(1, mesh.shape.get("tensor", 1))
    acts = tokens * cfg.n_layers * per_tok * a_bytes / tensor
    if cfg.remat == "full":  # one layer is rebuilt at a time during the backward pass
        acts += tokens * activation_elements_per_token(cfg, "none") * a_bytes / tensor
    if not flash_attention:  # scores and probabilities, float32, per layer kept
        kept = 1 if cfg.remat == "full" else cfg.n_layers
        acts += 2 * tokens * cfg.n_heads * seq_len * 4 * kept / tensor
    vocab_shards = (
        mesh.shape.get("tensor", 1) if cfg.vocab_size % mesh.shape.get("tensor", 1) == 0 else 1
    )
    logit_tokens = micro * (min(loss_chunk, seq_len) if loss_chunk else seq_len)
    logits = 2 * logit_tokens * cfg.vocab_size * 4 / vocab_shards  # f32 logits + their grad
    batch_bytes = 5 * batch / batch_shards * seq_len * 4
    fsdp = mesh.shape.get("fsdp", 1)
    layer_params = sum(v for p, v in per_device.items() if p.startswith("layers/")) / cfg.n_layers
    gathered = 0.0
    if fsdp > 1:  # weights in the compute dtype plus float32 gradients, at full fsdp size
        per_layer = layer_params * fsdp * (a_bytes / p_bytes + (1 if trainable == "all" else 0))
        gathered = per_layer * min(gathered_layers, cfg.n_layers)
    return MemoryPlan(
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=acts,
        logits=logits,
        batch=batch_bytes,
        gathered=gathered,
        n_params=n_params,
        n_trainable=n_trainable,
        mesh=dict(mesh_shape),
        dropped=list(dropped.values()),
    )


def _per_device(
    specs: Mapping[str, ParamSpec], mesh: FakeMesh, rules: Rules, nbytes: int
) -> dict[str, float]:
    return {
        p: math.prod(s.shape) * nbytes / _shard_factor(s, mesh, rules) for p, s in specs.items()
    }


def measured_step_memory(
    cfg: ModelConfig,
    mesh: Any,
    batch: int,
    seq_len: int,
    *,
    lora: LoraConfig | None = None,
    trainable: str = "all",
    grad_accum: int = 1,
    loss_chunk: int = 0,
) -> dict[str, int]:
    """Returns XLA's per-device memory analysis of the compiled train step on `mesh`
    (argument, output, temp bytes): the measurement the plan is checked against. Nothing is
    allocated: the step is compiled from abstract shapes."""
    import functools

    import jax
    import jax.numpy as jnp

    from jaxknow.config import OptimConfig
    from jaxknow.model.params import param_axes
    from jaxknow.model.sharded import abstract_params
    from jaxknow.parallel.rules import Sharder
    from jaxknow.train import optim
    from jaxknow.train.loop import batch_shardings
    from jaxknow.train.state import TrainState, split_params, state_shardings
    from jaxknow.train.step import BATCH_KEYS, train_step

    specs = flatten(param_specs(cfg))
    if lora is not None and lora.enabled:
        specs.update(flatten(lora_specs(cfg, lora)))
        cfg = cfg.replace(lora_scale=lora.scale)
    from jaxknow.model.params import unflatten

    tree = unflatten(specs)
    ocfg = OptimConfig(lr=1e-4, total_steps=10)
    tx = optim.make_optimizer(ocfg, cfg)
    sched = optim.make_schedule(ocfg)
    abstract = abstract_params(tree, cfg.storage_dtype, mesh)
    pred = is_lora_path if trainable == "lora" else (lambda p: True)
    t_abs, f_abs = split_params(abstract, pred)
    axes = flatten(param_axes(tree))
    t_axes = unflatten({p: axes[p] for p in flatten(t_abs)})
    f_axes = unflatten({p: axes[p] for p in flatten(f_abs)})
    sh = state_shardings(tx, t_abs, t_axes, f_abs, f_axes, mesh, DEFAULT_RULES)
    state = jax.eval_shape(
        lambda t, f: TrainState(
            step=jnp.zeros((), jnp.int32), params=t, opt_state=tx.init(t), frozen=f
        ),
        t_abs,
        f_abs,
    )
    b = {
        k: jax.ShapeDtypeStruct((batch, seq_len), jnp.float32 if k == "weights" else jnp.int32)
        for k in BATCH_KEYS
    }
    fn = jax.jit(
        functools.partial(
            train_step,
            cfg=cfg,
            tx=tx,
            schedule=sched,
            sharder=Sharder(mesh),
            grad_accum=grad_accum,
            loss_chunk=loss_chunk,
        ),
        in_shardings=(sh, batch_shardings(mesh, DEFAULT_RULES, batch, seq_len)),
        out_shardings=(sh, None),
        donate_argnums=(0,),
    )
    ma = fn.lower(state, b).compile().memory_analysis()
    return {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
    }
