"""Layer-delta ablation: where does finetuning put the knowledge (co-occurrence spec section 7).

With θ0 the base parameters and θ1 the finetuned ones, the model whose first k (separately:
last k) transformer layers take θ0 and the rest θ1 is evaluated for k = 0..L; a window ablation
reverts only layers [a, a + w) for each start a, which can isolate the middle of the stack
where first/last-k cannot. The layers are stacked (`model.layout`): layer i is index i of every
``layers/...`` leaf. Parameters outside the layers (token and
position embeddings, final norm, untied head) follow θ1 by default, so k = 0 is exactly θ1 and
k = L is θ1 with every layer delta removed; `non_layer` changes that (see `mix_layers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from jaxknow.eval.shared_prefix import SharedPrefix
from jaxknow.eval.tables import markdown_table
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import LAYERS, is_per_layer
from jaxknow.model.lora import is_lora_path, merge_lora
from jaxknow.model.params import flatten, unflatten

__all__ = [
    "AblationResult",
    "ablated_layers",
    "ablation_ks",
    "layer_delta_ablation",
    "mix_layers",
]

Side = Literal["first", "last", "window"]
NonLayer = Literal["finetuned", "base", "adjacent"]
Metrics = dict[str, float]


def _is_layer_path(path: str) -> bool:
    return path.startswith(LAYERS + "/")


def _n_layers_of(flat: Mapping[str, Any]) -> int:
    sizes = {v.shape[0] for p, v in flat.items() if _is_layer_path(p)}
    return sizes.pop() if len(sizes) == 1 else 0


def mix_layers(
    theta0: Mapping[str, Any],
    theta1: Mapping[str, Any],
    layers_from_base: set[int] | frozenset[int],
    *,
    non_layer: NonLayer = "finetuned",
) -> dict[str, Any]:
    """Returns parameters taking layer i from `theta0` (base) when i is in `layers_from_base`
    and from `theta1` (finetuned) otherwise.

    Parameters outside the layers follow `non_layer`: "finetuned" (default) takes them from
    θ1, "base" from θ0, "adjacent" ties ``embed/*`` to layer 0 and the rest (final norm,
    untied head) to the last layer, so that all-base layers give exactly θ0. Every value is
    bit-identical to its source: a leaf taken whole is the original array (no copy), a
    stacked leaf mixing both selects each layer's values from its side. Both trees must hold
    their layers stacked and have the same paths and shapes: merge LoRA adapters into θ1
    first (`merge_lora`); a leftover adapter raises ValueError.
    """
    if non_layer not in ("finetuned", "base", "adjacent"):
        raise ValueError(f"non_layer must be 'finetuned', 'base' or 'adjacent', got {non_layer!r}")
    if is_per_layer(theta0) or is_per_layer(theta1):
        raise ValueError("mix_layers takes the layers stacked (jaxknow.model.layout.stack)")
    f0, f1 = flatten(theta0), flatten(theta1)
    if set(f0) != set(f1):
        extra = sorted(set(f0) ^ set(f1))
        if any(is_lora_path(p) for p in extra):
            raise ValueError(
                f"parameter trees differ by LoRA adapters {extra[:4]}: merge them "
                "first (jaxknow.model.lora.merge_lora)"
            )
        raise ValueError(f"parameter trees differ: paths in only one of them {extra[:8]}")
    n = _n_layers_of(f1)
    bad = sorted(i for i in layers_from_base if not 0 <= i < n)
    if bad:
        raise ValueError(f"layers {bad} out of range for a {n}-layer model")
    out: dict[str, Any] = {}
    for path, v1 in f1.items():
        v0 = f0[path]
        if tuple(v0.shape) != tuple(v1.shape):
            raise ValueError(f"{path}: base shape {tuple(v0.shape)} != finetuned {tuple(v1.shape)}")
        if _is_layer_path(path):
            from_base = np.asarray([i in layers_from_base for i in range(n)])
            if from_base.all() or not from_base.any():
                out[path] = v0 if from_base.all() else v1
            else:
                mask = from_base.reshape(n, *(1,) * (len(v1.shape) - 1))
                out[path] = jnp.where(mask, v0, v1)
            continue
        if non_layer == "adjacent":
            base = (0 if path.startswith("embed/") else n - 1) in layers_from_base
        else:
            base = non_layer == "base"
        out[path] = v0 if base else v1
    return unflatten(out)


def ablation_ks(n_layers: int, step: int = 1) -> list[int]:
    """Returns the k grid 0, step, 2·step, ... that always ends at n_layers."""
    if step < 1:
        raise ValueError(f"step={step}: must be >= 1")
    return sorted({*range(0, n_layers + 1, step), n_layers})


def ablated_layers(side: Side, k: int, n_layers: int, window: int = 0) -> frozenset[int]:
    """Returns the layers that take θ0 for `side` and k: "first" the first k layers, "last"
    the last k, "window" the `window` layers starting at layer k (k + window <= n_layers)."""
    if not 0 <= k <= n_layers:
        raise ValueError(f"k={k} outside 0..{n_layers}")
    if side == "first":
        return frozenset(range(k))
    if side == "last":
        return frozenset(range(n_layers - k, n_layers))
    if side == "window":
        if not 1 <= window <= n_layers:
            raise ValueError(f"window={window}: must be in 1..{n_layers} for a window ablation")
        if k + window > n_layers:
            raise ValueError(f"window [{k}, {k + window}) runs past the last layer {n_layers - 1}")
        return frozenset(range(k, k + window))
    raise ValueError(f"side must be 'first', 'last' or 'window', got {side!r}")


@dataclasses.dataclass
class AblationResult:
    """Metrics per side and k: `results[side][k]` = evaluate(model whose first/last k layers,
    or for side "window" the `window` layers from layer k, take θ0)."""

    n_layers: int
    results: dict[str, dict[int, Metrics]]
    non_layer: str = "finetuned"
    window: int = 0

    def to_dict(self) -> dict[str, dict[int, Metrics]]:
        """Returns {side: {k: {metric: value}}} (a copy; JSON turns k into a string)."""
        return {s: {k: dict(m) for k, m in by_k.items()} for s, by_k in self.results.items()}

    def metrics(self) -> list[str]:
        """Returns the metric names, in first-seen order."""
        names: dict[str, None] = {}
        for by_k in self.results.values():
            for m in by_k.values():
                names.update(dict.fromkeys(m))
        return list(names)

    def series(self) -> dict[str, list[float]]:
        """Returns {"metric (side)": value for k = 0..L} (for `plots.plot_per_layer`)."""
        return {
            f"{m} ({s})": [by_k[k].get(m, float("nan")) for k in sorted(by_k)]
            for s, by_k in self.results.items()
            for m in self.metrics()
        }

    def table(self) -> str:
        """Returns a markdown table: one row per k, one column per (side, metric)."""
        cols = [(s, m) for s in self.results for m in self.metrics()]
        head = [
            "k",
            *(
                f"{m} (layers k..k+{self.window - 1} from base)"
                if s == "window"
                else f"{m} ({s} k from base)"
                for s, m in cols
            ),
        ]
        rows = []
        for k in range(self.n_layers + 1):
            cells = [self.results[s].get(k, {}).get(m) for s, m in cols]
            rows.append([str(k), *("" if c is None else f"{c:.4g}" for c in cells)])
        return markdown_table(head, rows, cell=str)

    def plot(
        self, path: str | Path, title: str = "layer-delta ablation", ylabel: str = "metric"
    ) -> Path:
        """Writes the curves (x = k, one line per metric and side) as a PNG; returns the path."""
        from jaxknow.eval.plots import plot_per_layer

        return plot_per_layer(
            self.series(), path, title, ylabel, xlabel="k (layers taken from the base model)"
        )


def layer_delta_ablation(
    theta0: Mapping[str, Any],
    theta1: Mapping[str, Any],
    n_layers: int,
    evaluate: Callable[[dict[str, Any]], Mapping[str, float]],
    sides: Sequence[Side] = ("first", "last"),
    *,
    non_layer: NonLayer = "finetuned",
    cfg: ModelConfig | None = None,
    ks: Sequence[int] | None = None,
    window: int = 0,
    share_prefix: bool = False,
) -> AblationResult:
    """Returns the metrics of the models whose first (resp. last) k layers take θ0 and the rest
    θ1, for each k of `ks` (default: 0..n_layers) and each side (see `mix_layers` for the
    non-layer parameters). Side "window" reverts the `window` layers from layer k instead, for
    each k of `ks` whose window fits in the stack.

    `evaluate` maps parameters to {metric: value}; a layer selection shared by both sides
    (k = 0, k = L) is evaluated once. If θ1 (or θ0) holds LoRA adapters, pass `cfg` to merge
    them first (`merge_lora`, which needs `cfg.lora_scale`).

    With `share_prefix`, `evaluate` receives each model as a `SharedPrefix` (which the
    scoring and generation functions accept in place of parameters): a model whose first j
    layers are θ0's (or θ1's) resumes at layer j from the residual stream of the reference
    model with every (no) layer from θ0, computed once per batch. Every first-k model then
    runs only its last L − k layers, every last-k model its last k: about half the arithmetic
    of evaluating each model whole, with the same results up to float round-off. The price is
    memory: both references' streams stay for every batch until the ablation ends, (L + 1) ×
    the batches' token slots × d_model floats each (SmolLM2-135M, QA and MC of 40 items: ~2.7 GB).
    """
    trees = []
    for name, theta in (("theta0", theta0), ("theta1", theta1)):
        if any(is_lora_path(p) for p in flatten(theta)):
            if cfg is None:
                raise ValueError(f"{name} holds LoRA adapters: pass cfg to merge them")
            theta = merge_lora(dict(theta), cfg)
        trees.append(theta)
    theta0, theta1 = trees
    found = _n_layers_of(flatten(theta1))
    if found != n_layers:
        raise ValueError(f"n_layers={n_layers} but the parameters have {found} layers")
    ks = range(n_layers + 1) if ks is None else sorted(set(ks))
    if "window" in sides and not 1 <= window <= n_layers:
        raise ValueError(f"window={window}: side 'window' needs a width in 1..{n_layers}")
    cache: dict[frozenset[int], Metrics] = {}
    results: dict[str, dict[int, Metrics]] = {}
    store: dict[tuple[str, str, str], Any] = {}
    refs = {}
    if share_prefix:  # the two references: every layer from θ0, none
        for name, sel in (("base", frozenset(range(n_layers))), ("finetuned", frozenset())):
            refs[name] = mix_layers(theta0, theta1, sel, non_layer=non_layer)

    def model(sel: frozenset[int]) -> Any:
        mixed = mix_layers(theta0, theta1, sel, non_layer=non_layer)
        if not share_prefix:
            return mixed
        # Layer 0 decides which reference shares the longer prefix; the embedding follows.
        name = "base" if 0 in sel else "finetuned"
        start = next((i for i in range(n_layers) if (i in sel) != (name == "base")), n_layers)
        return SharedPrefix(mixed, refs[name], start, name, store)

    for side in sides:
        results[side] = {}
        for k in ks:
            if side == "window" and k + window > n_layers:
                continue
            sel = ablated_layers(side, k, n_layers, window)
            if sel not in cache:
                cache[sel] = {m: float(v) for m, v in evaluate(model(sel)).items()}
            results[side][k] = dict(cache[sel])
    return AblationResult(n_layers=n_layers, results=results, non_layer=non_layer, window=window)
