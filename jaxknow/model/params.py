"""Parameter specs: one declarative spec per parameter (shape, logical axes, initialiser).

Parameters are a nested dict with stable, readable paths. The transformer layers are stored
stacked (`jaxknow.model.layout`): ``layers/attn/q/kernel`` has shape [L, ...] with an
unsharded leading layer axis; layer i's parameter is known by its per-layer path
``layers/{i}/attn/q/kernel`` (its initial values, selections, Hugging Face tensors).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.tree_util import keystr

from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import layer_paths, unstack

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """How one parameter is shaped, sharded (logical axes) and initialised."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str = "normal"  # "normal", "zeros" or "ones"
    std: float = 0.02


def _dense(
    shape: tuple[int, ...], axes: tuple[str | None, ...], std: float
) -> dict[str, ParamSpec]:
    return {"kernel": ParamSpec(shape, axes, "normal", std)}


def _norm(cfg: ModelConfig) -> dict[str, ParamSpec]:
    # Gemma stores (scale - 1): its neutral value is zero.
    spec = {
        "scale": ParamSpec((cfg.d_model,), ("norm",), "zeros" if cfg.norm_scale_offset else "ones")
    }
    if cfg.norm == "layernorm" and cfg.norm_bias:
        spec["bias"] = ParamSpec((cfg.d_model,), ("norm",), "zeros")
    return spec


def layer_specs(cfg: ModelConfig) -> dict[str, Any]:
    """Returns the ParamSpec tree of one transformer block."""
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)  # GPT-2's scaled init of residual projections
    attn = {
        "q": _dense((d, h, hd), ("embed", "heads", "head_dim"), std),
        "k": _dense((d, kv, hd), ("embed", "kv_heads", "head_dim"), std),
        "v": _dense((d, kv, hd), ("embed", "kv_heads", "head_dim"), std),
        "o": _dense((h, hd, d), ("heads", "head_dim", "embed"), out_std),
    }
    if cfg.attn_bias:
        attn["q"]["bias"] = ParamSpec((h, hd), ("heads", "head_dim"), "zeros")
        attn["k"]["bias"] = ParamSpec((kv, hd), ("kv_heads", "head_dim"), "zeros")
        attn["v"]["bias"] = ParamSpec((kv, hd), ("kv_heads", "head_dim"), "zeros")
    if cfg.attn_out_bias:
        attn["o"]["bias"] = ParamSpec((d,), ("norm",), "zeros")
    mlp = {
        "up": _dense((d, f), ("embed", "mlp"), std),
        "down": _dense((f, d), ("mlp", "embed"), out_std),
    }
    if cfg.mlp in ("swiglu", "geglu"):
        mlp["gate"] = _dense((d, f), ("embed", "mlp"), std)
    if cfg.mlp_bias:
        mlp["up"]["bias"] = ParamSpec((f,), ("mlp",), "zeros")
        mlp["down"]["bias"] = ParamSpec((d,), ("norm",), "zeros")
        if "gate" in mlp:
            mlp["gate"]["bias"] = ParamSpec((f,), ("mlp",), "zeros")
    if cfg.qk_norm:  # one scale over head_dim, shared by every head
        init = "zeros" if cfg.norm_scale_offset else "ones"
        attn["q_norm"] = {"scale": ParamSpec((hd,), ("head_dim",), init)}
        attn["k_norm"] = {"scale": ParamSpec((hd,), ("head_dim",), init)}
    block = {"attn_norm": _norm(cfg), "attn": attn, "mlp_norm": _norm(cfg), "mlp": mlp}
    if cfg.post_norms:
        block["attn_post_norm"] = _norm(cfg)
        block["mlp_post_norm"] = _norm(cfg)
    return block


def repeat_layers(block: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
    """Returns the stacked ParamSpec tree of `n_layers` copies of a block's specs: each spec
    with a leading [n_layers] axis that is never sharded (logical axis None)."""
    return jax.tree.map(
        lambda s: ParamSpec((n_layers, *s.shape), (None, *s.axes), s.init, s.std),
        dict(block),
        is_leaf=_is_spec,
    )


def per_layer_specs(specs: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the per-layer view of a stacked ParamSpec tree (``layers/{i}/...``, each spec
    without the layer axis): for jobs that name layers one by one."""
    return unstack(
        dict(specs),
        take=lambda s, _: ParamSpec(s.shape[1:], s.axes[1:], s.init, s.std),
        is_leaf=_is_spec,
    )


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
    """Returns the ParamSpec tree of the whole model (same structure as the parameters: the
    layers stacked)."""
    embed = {
        "tokens": ParamSpec(
            (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), "normal", cfg.init_std
        )
    }
    if cfg.pos_embedding == "learned":
        embed["positions"] = ParamSpec(
            (cfg.max_seq_len, cfg.d_model), ("positions", "embed"), "normal", 0.01
        )
    specs: dict[str, Any] = {
        "embed": embed,
        "layers": repeat_layers(layer_specs(cfg), cfg.n_layers),
        "final_norm": _norm(cfg),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = _dense((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)
    return specs


def _is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def param_axes(specs: Mapping[str, Any]) -> Any:
    """Returns the tree of logical-axis tuples for a ParamSpec tree."""
    return jax.tree.map(lambda s: s.axes, specs, is_leaf=_is_spec)


def param_shapes(specs: Mapping[str, Any], dtype: Any) -> Any:
    """Returns a tree of ShapeDtypeStructs for a ParamSpec tree."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=_is_spec)


def init_param(spec: ParamSpec, key: jax.Array, dtype: Any) -> jax.Array:
    """Returns one freshly initialised parameter."""
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    return (spec.std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)


def path_key(key: jax.Array, path: str) -> jax.Array:
    """Returns a key derived from `key` and a parameter path (stable across model layouts)."""
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def init_params(specs: Mapping[str, Any], key: jax.Array, dtype: Any) -> Params:
    """Returns initialised parameters for a ParamSpec tree.

    Each parameter's random stream depends only on the seed and its own path, so adding a
    parameter (a LoRA adapter, an untied head) never changes the others; layer i of a stacked
    parameter draws from its per-layer path (``layers/{i}/...``), so its values do not depend
    on the layout. Jit this with `out_shardings` to create the parameters directly in their
    sharded layout.
    """

    def one(path: str, s: ParamSpec) -> jax.Array:
        paths = layer_paths(path, s.shape[0]) if s.shape else [path]
        if paths == [path]:
            return init_param(s, path_key(key, path), dtype)
        if s.init != "normal":
            return init_param(s, key, dtype)
        layer = ParamSpec(s.shape[1:], s.axes[1:], s.init, s.std)
        return jnp.stack([init_param(layer, path_key(key, p), dtype) for p in paths])

    return jax.tree_util.tree_map_with_path(
        lambda p, s: one(keystr(p, simple=True, separator="/"), s), specs, is_leaf=_is_spec
    )


def count_params(tree: Any) -> int:
    """Returns the total number of scalars in a tree of arrays, shape structs or ParamSpecs."""
    leaves = jax.tree.leaves(tree, is_leaf=_is_spec)
    return int(sum(math.prod(x.shape) for x in leaves))


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Returns {"a/b/c": leaf} for a nested dict (`flax.traverse_util.flatten_dict`)."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the nested dict for {"a/b/c": leaf} (`flax.traverse_util.unflatten_dict`)."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """Returns `tree` with every leaf replaced by fn(path_string, leaf)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fn(keystr(p, simple=True, separator="/"), x), tree
    )
