"""The parameter layout: transformer layers stacked, and the per-layer views the edges need.

Parameter trees hold their layers STACKED: ``layers`` is one tree with a leading [L] axis per
parameter kind (``layers/attn/q/kernel`` of shape [L, ...], the layer axis never sharded).
That is the layout of freshly initialised parameters, of the train state, of what training
returns, of checkpoints and of `io.load.load_model`; the model's `forward` takes it.

A PER-LAYER view (``layers`` keyed by the layer index: ``layers/3/attn/q/kernel``) exists only
where a job needs one: Hugging Face / GGUF tensors (one per layer) on import and export,
checkpoints written by earlier versions (converted on read), selections by layer (forgetting),
and a train state whose layers are treated differently (only some layers trained, a
layer-specific weight-decay pattern: `train.state.homogeneous_layers`). This module is the one
place that converts between the two:

- `stack` / `unstack`: per-layer ``layers`` dicts <-> stacked trees, inside any pytree
  (parameters, optimizer states, a TrainState; with a `combine` / `take`, trees of shapes,
  shardings, logical axes or ParamSpecs);
- `is_per_layer`: whether a tree holds a per-layer ``layers`` dict anywhere;
- `layer_paths` / `split_layer_path`: a stacked path <-> the per-layer paths it stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

LAYERS = "layers"


def _is_layer_dict(x: Any) -> bool:
    """True for a per-layer dict: non-empty and keyed by layer indices ("0", "1", ...)."""
    return isinstance(x, Mapping) and bool(x) and all(str(k).isdigit() for k in x)


def _holds_per_layer(x: Any) -> bool:
    return isinstance(x, Mapping) and _is_layer_dict(x.get(LAYERS))


def _holds_stacked(x: Any) -> bool:
    layers = x.get(LAYERS) if isinstance(x, Mapping) else None
    return isinstance(layers, Mapping) and bool(layers) and not _is_layer_dict(layers)


def _convert(
    tree: Any, holds: Callable[[Any], bool], fn: Callable[[Any], Any], is_leaf: Any
) -> Any:
    """Returns `tree` with every dict for which `holds` is true replaced by fn(dict)."""
    stop = (lambda x: holds(x) or is_leaf(x)) if is_leaf else holds
    return jax.tree.map(lambda x: fn(x) if holds(x) else x, tree, is_leaf=stop)


def stack(
    tree: Any,
    combine: Callable[[list[Any]], Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Returns `tree` with every per-layer ``layers`` dict stacked into one tree.

    `tree` is any pytree: parameters, an optax state (its parameter-shaped subtrees such as
    Adam's moments are converted, scalars such as step counts are kept) or a whole TrainState.
    Each stacked leaf is ``combine([leaf of layer 0, leaf of layer 1, ...])``, by default
    ``jnp.stack`` (a new leading [L] axis); pass another `combine` (and `is_leaf`) for trees of
    shardings, shapes, logical axes or specs. Trees without per-layer dicts come back
    unchanged. Raises ValueError when the layers are not 0..L-1 or differ in tree structure.
    """
    combine = combine or (lambda xs: jnp.stack(xs))

    def one(node: Any) -> Any:
        layers = node[LAYERS]
        n = len(layers)
        if set(layers) != {str(i) for i in range(n)}:
            raise ValueError(f"cannot stack layers {sorted(layers, key=int)}: not 0..{n - 1}")
        trees = [layers[str(i)] for i in range(n)]
        first = jax.tree.structure(trees[0], is_leaf=is_leaf)
        for i, t in enumerate(trees[1:], 1):
            if jax.tree.structure(t, is_leaf=is_leaf) != first:
                raise ValueError(f"cannot stack layers: layer {i}'s tree differs from layer 0's")
        stacked = jax.tree.map(lambda *xs: combine(list(xs)), *trees, is_leaf=is_leaf)
        return {**node, LAYERS: stacked}

    return _convert(tree, _holds_per_layer, one, is_leaf)


def unstack(
    tree: Any,
    n: int | None = None,
    take: Callable[[Any, int], Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Returns `tree` with every stacked ``layers`` tree split into per-layer trees
    ``{"0": .., "1": .., ...}``: the inverse of `stack`.

    Layer i's leaf is ``take(stacked_leaf, i)``, by default ``leaf[i]``; the number of layers
    is `n`, by default the leading dimension of the stacked leaves (give it for trees whose
    leaves have no shape, e.g. shardings). Trees already per layer come back unchanged.
    """
    take = take or (lambda x, i: x[i])

    def one(node: Any) -> Any:
        layers = node[LAYERS]
        count = n
        if count is None:
            sizes = {x.shape[0] for x in jax.tree.leaves(layers, is_leaf=is_leaf)}
            if len(sizes) != 1:
                raise ValueError(f"stacked layers with leading sizes {sorted(sizes)}")
            count = sizes.pop()
        per_layer = {
            str(i): jax.tree.map(lambda x, i=i: take(x, i), layers, is_leaf=is_leaf)
            for i in range(count)
        }
        return {**node, LAYERS: per_layer}

    return _convert(tree, _holds_stacked, one, is_leaf)


def is_per_layer(tree: Any) -> bool:
    """Returns True when `tree` (parameters, an optimizer or train state, a checkpoint's tree
    metadata) holds a per-layer ``layers`` dict anywhere."""
    return any(map(_holds_per_layer, jax.tree.leaves(tree, is_leaf=_holds_per_layer)))


def layer_paths(path: str, n: int) -> list[str]:
    """Returns the per-layer paths a stacked path stands for (``layers/attn/q/kernel`` ->
    ``layers/0/attn/q/kernel``, ..., ``layers/{n-1}/...``); any other path (outside the layers,
    or already per layer) stands for itself."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != LAYERS or parts[1].isdigit():
        return [path]
    rest = "/".join(parts[1:])
    return [f"{LAYERS}/{i}/{rest}" for i in range(n)]


def split_layer_path(path: str) -> tuple[str, int | None]:
    """Returns (the stacked path, the layer index) of a per-layer path
    (``layers/3/attn/q/kernel`` -> (``layers/attn/q/kernel``, 3)); any other path comes back
    with None."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == LAYERS and parts[1].isdigit():
        return "/".join([LAYERS, *parts[2:]]), int(parts[1])
    return path, None
