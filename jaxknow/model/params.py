"""Parameter layout: one declarative spec per parameter (shape, logical axes, initialiser).

Parameters are a nested dict with stable, readable paths, e.g. ``layers/3/attn/q/kernel``;
`layers` is keyed by the layer index as a string so that a layer is selected by its path.
A train state whose model scans its layers holds them stacked instead (``layers/attn/q/kernel``
of shape [L, ...]); `stack_layers` / `unstack_layers` convert between the two layouts.
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


def param_specs(cfg: ModelConfig) -> dict[str, Any]:
    """Returns the ParamSpec tree of the whole model (same structure as the parameters)."""
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
        "layers": {str(i): layer_specs(cfg) for i in range(cfg.n_layers)},
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
    parameter (a LoRA adapter, an untied head) never changes the others. Jit this with
    `out_shardings` to create the parameters directly in their sharded layout.
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, s: init_param(s, path_key(key, keystr(p, simple=True, separator="/")), dtype),
        specs,
        is_leaf=_is_spec,
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


def layer_of(path: str) -> int | None:
    """Returns the layer index of a parameter path (``layers/3/...`` -> 3), or None (also for
    a path into stacked layers, ``layers/attn/...``: see `is_stacked_path`)."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1])
    return None


# --- Stacked layer storage ---------------------------------------------------------------
#
# When the layers run as one `lax.scan`, the train state holds ``layers`` STACKED: one tree
# with a leading [L] axis per parameter kind (``layers/attn/q/kernel`` of shape [L, ...])
# instead of one tree per layer (``layers/3/attn/q/kernel``). Everything outside the train
# state (checkpoints on disk, loading, evaluation, export) keeps the per-layer layout; these
# functions are the one place that converts between the two.

LAYERS = "layers"


def _is_layer_dict(x: Any) -> bool:
    """True for a per-layer dict: non-empty and keyed by layer indices ("0", "1", ...)."""
    return isinstance(x, Mapping) and bool(x) and all(str(k).isdigit() for k in x)


def holds_per_layer(x: Any) -> bool:
    """Returns True for a dict whose ``layers`` entry is keyed by layer index (per-layer)."""
    return isinstance(x, Mapping) and _is_layer_dict(x.get(LAYERS))


def holds_stacked(x: Any) -> bool:
    """Returns True for a dict whose ``layers`` entry is one stacked tree (not per layer)."""
    layers = x.get(LAYERS) if isinstance(x, Mapping) else None
    return isinstance(layers, Mapping) and bool(layers) and not _is_layer_dict(layers)


def _why_not_stackable(layers: Mapping[str, Any], is_leaf: Callable[[Any], bool] | None) -> str:
    """Returns why a per-layer dict cannot be stacked ("" when it can)."""
    n = len(layers)
    if set(layers) != {str(i) for i in range(n)}:
        return f"layers {sorted(layers, key=int)} are not 0..{n - 1}"
    first = jax.tree.structure(layers["0"], is_leaf=is_leaf)
    for i in range(1, n):
        if jax.tree.structure(layers[str(i)], is_leaf=is_leaf) != first:
            return f"layer {i}'s tree differs from layer 0's"
    return ""


def _holders(tree: Any, holds: Callable[[Any], bool], is_leaf: Any) -> list[Any]:
    """Returns the dicts in `tree` (a pytree) for which `holds` is true (not below them)."""
    found: list[Any] = []
    stop = (lambda x: holds(x) or is_leaf(x)) if is_leaf else holds
    for node in jax.tree.leaves(tree, is_leaf=stop):
        if holds(node):
            found.append(node)
    return found


def can_stack_layers(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> bool:
    """Returns True when every per-layer ``layers`` dict in `tree` holds layers 0..L-1 that
    all have the same tree structure (so `stack_layers` succeeds)."""
    return not any(
        _why_not_stackable(h[LAYERS], is_leaf) for h in _holders(tree, holds_per_layer, is_leaf)
    )


def is_stacked(tree: Any) -> bool:
    """Returns True when `tree` (parameters, an optimizer state, a train state, ...) holds
    any ``layers`` entry in the stacked layout."""
    return bool(_holders(tree, holds_stacked, None))


def stacked_layer_count(tree: Any) -> int | None:
    """Returns the number of stacked layers in `tree` (the leading dimension of its stacked
    ``layers`` leaves), or None when nothing in it is stacked."""
    for holder in _holders(tree, holds_stacked, None):
        leaves = jax.tree.leaves(holder[LAYERS])
        if leaves:
            return int(leaves[0].shape[0])
    return None


def stack_layers(
    tree: Any,
    combine: Callable[[list[Any]], Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Returns `tree` with every per-layer ``layers`` dict stacked into one tree.

    `tree` is any pytree: parameters (``{"embed": .., "layers": {"0": .., "1": ..}, ..}``),
    frozen parameters, an optax state (its parameter-shaped subtrees such as Adam's moments
    are converted, scalars such as step counts are kept) or a whole TrainState. Each leaf of
    the stacked tree is ``combine([leaf of layer 0, leaf of layer 1, ...])``, by default
    ``jnp.stack`` (a new leading [L] axis); pass another `combine` (and `is_leaf`) for trees
    of shardings or logical axes. Trees without per-layer dicts come back unchanged.
    Raises ValueError when the layers are not 0..L-1 or differ in tree structure.
    """
    combine = combine or (lambda xs: jnp.stack(xs))

    def convert(node: Any) -> Any:
        if not holds_per_layer(node):
            return node
        layers = node[LAYERS]
        why = _why_not_stackable(layers, is_leaf)
        if why:
            raise ValueError(f"cannot stack the layers: {why}")
        trees = [layers[str(i)] for i in range(len(layers))]
        stacked = jax.tree.map(lambda *xs: combine(list(xs)), *trees, is_leaf=is_leaf)
        return {**node, LAYERS: stacked}

    stop = (lambda x: holds_per_layer(x) or is_leaf(x)) if is_leaf else holds_per_layer
    return jax.tree.map(convert, tree, is_leaf=stop)


def unstack_layers(
    tree: Any,
    n_layers: int | None = None,
    take: Callable[[Any, int], Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Returns `tree` with every stacked ``layers`` tree split back into per-layer trees
    ``{"0": .., "1": .., ...}``: the inverse of `stack_layers`.

    Layer i's leaf is ``take(stacked_leaf, i)``, by default ``leaf[i]``; the number of layers
    is `n_layers`, by default the leading dimension of the stacked leaves (give it for trees
    of shardings). Trees already per layer come back unchanged.
    """
    take = take or (lambda x, i: x[i])

    def convert(node: Any) -> Any:
        if not holds_stacked(node):
            return node
        layers = node[LAYERS]
        n = n_layers
        if n is None:
            sizes = {x.shape[0] for x in jax.tree.leaves(layers, is_leaf=is_leaf)}
            if len(sizes) != 1:
                raise ValueError(f"stacked layers with leading sizes {sorted(sizes)}")
            n = sizes.pop()
        per_layer = {
            str(i): jax.tree.map(lambda x, i=i: take(x, i), layers, is_leaf=is_leaf)
            for i in range(n)
        }
        return {**node, LAYERS: per_layer}

    stop = (lambda x: holds_stacked(x) or is_leaf(x)) if is_leaf else holds_stacked
    return jax.tree.map(convert, tree, is_leaf=stop)


def is_stacked_path(path: str) -> bool:
    """Returns True for a path into stacked layers (``layers/attn/q/kernel``)."""
    parts = path.split("/")
    return len(parts) >= 2 and parts[0] == LAYERS and not parts[1].isdigit()


def per_layer_paths(path: str, n_layers: int) -> list[str]:
    """Returns the per-layer paths a stacked path stands for (``layers/attn/q/kernel`` ->
    ``layers/0/attn/q/kernel``, ...); any other path stands for itself."""
    if not is_stacked_path(path):
        return [path]
    rest = path[len(LAYERS) + 1 :]
    return [f"{LAYERS}/{i}/{rest}" for i in range(n_layers)]


def stacked_path(path: str) -> str:
    """Returns the path of a per-layer parameter in the stacked layout
    (``layers/3/attn/q/kernel`` -> ``layers/attn/q/kernel``); other paths are unchanged."""
    parts = path.split("/")
    if layer_of(path) is None:
        return path
    return "/".join([parts[0], *parts[2:]])


def same_for_every_layer(predicate: Callable[[str], bool], paths: Any) -> bool:
    """Returns True when `predicate` gives one answer for all layers' copies of each
    per-layer path in `paths` (so a stacked parameter kind has one answer)."""
    answers: dict[str, set[bool]] = {}
    for p in paths:
        answers.setdefault(stacked_path(p), set()).add(bool(predicate(p)))
    return all(len(a) == 1 for a in answers.values())
