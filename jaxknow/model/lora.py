"""LoRA adapters stored beside the kernels they adapt (``.../q/lora_a``, ``.../q/lora_b``),
plus an optional low-rank update of the input embedding (``embed/lora_a``, ``embed/lora_b``).

The update of projection W is ``scale * A @ B`` with B (or, for the embedding, A) initialised
to zero, so a freshly adapted model computes exactly what the base model computes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxknow.model.config import ModelConfig
from jaxknow.model.params import (
    ParamSpec,
    flatten,
    init_params,
    layer_specs,
    param_specs,
    repeat_layers,
    unflatten,
)

ATTN_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")
_LORA_LEAF = re.compile(r"/lora_[ab]$")
ALL_LINEAR = "all-linear"  # lora.targets value: every projection the model's blocks have


def all_linear_targets(mlp: str) -> tuple[str, ...]:
    """Returns every adaptable projection of a block with MLP kind `mlp` ("gelu" blocks have no
    gate projection; "swiglu" and "geglu" do), as the co-occurrence authors' LoRA covers."""
    if mlp == "gelu":
        return (*ATTN_TARGETS, "up", "down")
    return ATTN_TARGETS + MLP_TARGETS


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters, their rank and scaling."""

    rank: int = 0  # 0: no LoRA
    alpha: float = 16.0
    rslora: bool = False  # rank-stabilised scale alpha/sqrt(rank) instead of alpha/rank
    # The adapted projections, or "all-linear": every projection of the model's blocks, set
    # by `resolved` once the model is known (a training run's RunSpec does).
    targets: tuple[str, ...] | Literal["all-linear"] = ("q", "v")
    embedding_rank: int = 0  # rank of the input-embedding update; 0: none

    def __post_init__(self) -> None:
        for f in ("rank", "embedding_rank"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f}={getattr(self, f)!r}: must be >= 0")
        if isinstance(self.targets, str):
            if self.targets != ALL_LINEAR:
                why = f"a list of projections or {ALL_LINEAR!r}"
                raise ValueError(f"targets={self.targets!r}: {why}")
            return
        unknown = set(self.targets) - set(ATTN_TARGETS + MLP_TARGETS)
        if unknown:
            raise ValueError(
                f"targets: unknown projection(s) {sorted(unknown)}; "
                f"known: {ATTN_TARGETS + MLP_TARGETS}"
            )

    def resolved(self, mlp: str) -> LoraConfig:
        """Returns this config with ``targets="all-linear"`` replaced by the projections of a
        block with MLP kind `mlp` (`all_linear_targets`)."""
        if self.targets != ALL_LINEAR:
            return self
        return dataclasses.replace(self, targets=all_linear_targets(mlp))

    @property
    def enabled(self) -> bool:
        """Returns True when any adapter is configured."""
        return self.rank > 0 or self.embedding_rank > 0

    @property
    def scale(self) -> float:
        """Returns the factor applied to adapter outputs."""
        if self.rank == 0:
            return 1.0
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _adapter_specs(kernel: ParamSpec, n_in: int, rank: int) -> dict[str, ParamSpec]:
    in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
    in_axes, out_axes = kernel.axes[:n_in], kernel.axes[n_in:]
    fan_in = math.prod(in_shape)
    return {
        "lora_a": ParamSpec(
            (*in_shape, rank), (*in_axes, "lora_rank"), "normal", 1.0 / math.sqrt(fan_in)
        ),
        "lora_b": ParamSpec((rank, *out_shape), ("lora_rank", *out_axes), "zeros"),
    }


def lora_specs(cfg: ModelConfig, lora: LoraConfig) -> dict[str, Any]:
    """Returns the ParamSpec tree of the adapters alone (same paths as the model's params:
    the layers' adapters stacked, ``layers/attn/q/lora_a`` of shape [L, ...])."""
    flat: dict[str, ParamSpec] = {}
    block = flatten(layer_specs(cfg))
    n_in = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
    if lora.rank > 0:
        adapters: dict[str, ParamSpec] = {}
        for t in lora.targets:
            group = "attn" if t in ATTN_TARGETS else "mlp"
            key = f"{group}/{t}/kernel"
            if key not in block:
                raise ValueError(f"lora.targets: the model has no {group}/{t} projection")
            for name, spec in _adapter_specs(block[key], n_in[t], lora.rank).items():
                adapters[f"{group}/{t}/{name}"] = spec
        stacked = repeat_layers(unflatten(adapters), cfg.n_layers)
        flat.update({f"layers/{p}": s for p, s in flatten(stacked).items()})
    if lora.embedding_rank > 0:
        r = lora.embedding_rank
        flat["embed/lora_a"] = ParamSpec((cfg.vocab_size, r), ("vocab", "lora_rank"), "zeros")
        flat["embed/lora_b"] = ParamSpec(
            (r, cfg.d_model), ("lora_rank", "embed"), "normal", 1.0 / math.sqrt(r)
        )
    return unflatten(flat)


def init_lora(cfg: ModelConfig, lora: LoraConfig, key: jax.Array) -> dict[str, Any]:
    """Returns freshly initialised adapters (the update they make is zero)."""
    return init_params(lora_specs(cfg, lora), key, cfg.storage_dtype)


def is_lora_path(path: str) -> bool:
    """Returns True for an adapter parameter path."""
    return bool(_LORA_LEAF.search(path))


def merge_lora(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Returns parameters with every adapter folded into its kernel (adapters removed); the
    stacked layers' adapters layer by layer (each layer's update computed as a lone layer's)."""
    flat = flatten(params)
    out = {p: v for p, v in flat.items() if not is_lora_path(p)}
    for path in [p for p in flat if p.endswith("/lora_a")]:
        base = path[: -len("/lora_a")]
        a, b = flat[path].astype(jnp.float32), flat[base + "/lora_b"].astype(jnp.float32)
        if path.startswith("layers/"):  # stacked: [L, ...] adapters
            delta = jnp.stack([jnp.tensordot(a[i], b[i], axes=1) for i in range(a.shape[0])])
        else:
            delta = jnp.tensordot(a, b, axes=1)
        delta = cfg.lora_scale * delta
        target = base + "/kernel" if base != "embed" else "embed/tokens"
        out[target] = (out[target].astype(jnp.float32) + delta).astype(out[target].dtype)
    return unflatten(out)


def full_specs(model: ModelConfig, lora: LoraConfig) -> dict[str, Any]:
    """Returns the ParamSpec tree of the model plus its LoRA adapters (if any)."""
    specs = flatten(param_specs(model))
    if lora.enabled:
        specs.update(flatten(lora_specs(model, lora)))
    return unflatten(specs)
