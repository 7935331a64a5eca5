"""Streaming a Hugging Face tensor plan onto a mesh: any tensor reader (the safetensors files
of `hf_weights`, a GGUF file's dequantizing reader in `gguf`) and a Hugging Face config dict
become jaxknow parameters, each placed in its sharding straight from the reader.

Kept apart from `hf` (which also exports and therefore loads jaxknow checkpoints) so that the
GGUF importer, and the named models above it, depend on the importer alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxknow.io.hf_config import HFConversionError, model_config_from_hf
from jaxknow.io.hf_tensors import (
    NP_DTYPES,
    TensorSource,
    check_tensors,
    gpt2_prefix,
    read_param_slice,
    tensor_plan,
)
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import layer_paths
from jaxknow.model.params import flatten, param_axes, param_shapes, param_specs, unflatten
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, tree_shardings


@dataclasses.dataclass
class HFModel:
    """An imported model: jaxknow parameters (sharded on the mesh), its config, its family and
    the original Hugging Face config."""

    params: Any
    cfg: ModelConfig
    family: str
    hf_config: dict[str, Any]


def check_param_dtype(param_dtype: str) -> None:
    """Raises HFConversionError when `param_dtype` is not a dtype the importer stores."""
    if param_dtype not in NP_DTYPES:
        raise HFConversionError(f"param_dtype={param_dtype!r}: must be one of {list(NP_DTYPES)}")


def load_params_from_reader(
    hf: dict[str, Any],
    reader: Any,
    mesh: Mesh | None = None,
    *,
    param_dtype: str = "float32",
    dtype: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> HFModel:
    """Returns the HFModel of a Hugging Face config dict and a tensor reader (anything with
    the `SafetensorsReader` methods names / shape / dtype_code / read and a `directory` for
    messages, e.g. a GGUF file's dequantizing reader), each parameter streamed into its
    sharding on `mesh` (default: all devices, replicated): a stacked parameter's shards are
    assembled from every layer's tensor (its slice of each)."""
    from jaxknow.parallel.mesh import make_mesh

    check_param_dtype(param_dtype)
    family, cfg = model_config_from_hf(hf, param_dtype=param_dtype, dtype=dtype)
    prefix = gpt2_prefix(reader.names()) if family == "gpt2" else None
    plan = tensor_plan(family, cfg, prefix)
    check_tensors(reader, plan, family, cfg)
    mesh = mesh or make_mesh(-1, 1, 1)
    specs = param_specs(cfg)
    target = NP_DTYPES[param_dtype]
    shardings = flatten(tree_shardings(param_axes(specs), param_shapes(specs, target), mesh, rules))
    flat_specs = flatten(specs)
    out = {}
    for path, spec in flat_specs.items():
        layers = layer_paths(path, spec.shape[0])
        sources = [plan[p] for p in layers]
        cache: dict[Any, np.ndarray] = {}  # replicas ask for the same block

        def cb(
            index: tuple[slice, ...],
            sources: list[TensorSource] = sources,
            stacked: bool = layers != [path],
            cache: dict[Any, np.ndarray] = cache,
            shape: tuple[int, ...] = spec.shape,
        ) -> np.ndarray:
            key = tuple(s.indices(n) for s, n in zip(index, shape))
            if key not in cache:
                if stacked:  # [L, ...]: layer i's rows from layer i's tensor, one at a time
                    rows = range(*index[0].indices(shape[0]))
                    block = None
                    for j, i in enumerate(rows):
                        part = read_param_slice(reader, sources[i], index[1:], target)
                        if block is None:
                            block = np.empty((len(rows), *part.shape), part.dtype)
                        block[j] = part
                    cache[key] = block
                else:
                    cache[key] = read_param_slice(reader, sources[0], tuple(index), target)
            return cache[key]

        out[path] = jax.make_array_from_callback(spec.shape, shardings[path], cb)
        cache.clear()
    return HFModel(params=unflatten(out), cfg=cfg, family=family, hf_config=hf)
