"""The table tying Hugging Face tensors to jaxknow parameters, and the slicing both ways.

One table per family (`tensor_plan`): each jaxknow parameter is a [in dims..., out dims...]
view of a stored matrix, stored either [in, out] (GPT-2's Conv1D, embeddings) or [out, in]
(torch Linear), possibly at an offset along the out axis (GPT-2's fused q/k/v projection).
Import reads one parameter slice at a time (`read_param_slice`); export assembles each stored
tensor from the parameters it holds (`stored_tensor`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jaxknow.io.hf_config import FAMILIES, HFConversionError
from jaxknow.io.hf_weights import SafetensorsReader
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import split_layer_path
from jaxknow.model.params import flatten, param_specs, per_layer_specs

# Stored tensors that are buffers, not parameters: GPT-2's causal mask, cached rotary tables.
_IGNORED_TENSORS = re.compile(r"(\.attn\.(bias|masked_bias)|rotary_emb\.inv_freq)$")
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")
#: numpy dtypes a model's parameters can be converted to, by name.
NP_DTYPES = {
    "float32": np.dtype("float32"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype("float16"),
}


@dataclasses.dataclass(frozen=True)
class TensorSource:
    """Where one jaxknow parameter lives in a Hugging Face checkpoint.

    The parameter has shape (*in_shape, *out_shape). The stored tensor `name` (shape
    `stored_shape`) is a matrix [in, out] (or [out, in] when `torch_linear`) whose out axis
    holds the parameter's flattened out dims from `offset` on; 1-d stored tensors (biases,
    norms) have no in dims.
    """

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stored_shape: tuple[int, ...]
    torch_linear: bool = False
    offset: int = 0


def gpt2_prefix(names: Sequence[str]) -> str:
    """Returns the prefix of a GPT-2 checkpoint's tensor names ("transformer." or none)."""
    return "transformer." if any(n.startswith("transformer.") for n in names) else ""


def tensor_plan(
    family: str, cfg: ModelConfig, prefix: str | None = None
) -> dict[str, TensorSource]:
    """Returns {jaxknow parameter path: TensorSource} for a model of `family`, by per-layer
    path (``layers/3/attn/q/kernel``: the Hugging Face tensors are per layer).

    `prefix` is the stored names' prefix ("transformer." or "model."; GPT-2 checkpoints also
    come without one); default: the family's usual prefix.
    """
    d, h, kv, hd, f, v = (
        cfg.d_model,
        cfg.n_heads,
        cfg.kv_heads,
        cfg.dim_per_head,
        cfg.d_ff,
        cfg.vocab_size,
    )
    plan: dict[str, TensorSource] = {}
    T = TensorSource

    def norm(path: str, name: str) -> None:
        plan[f"{path}/scale"] = T(f"{name}.weight", (), (d,), (d,))
        if cfg.norm == "layernorm" and cfg.norm_bias:
            plan[f"{path}/bias"] = T(f"{name}.bias", (), (d,), (d,))

    if family == "gpt2":
        p = "transformer." if prefix is None else prefix
        plan["embed/tokens"] = T(f"{p}wte.weight", (v,), (d,), (v, d))
        plan["embed/positions"] = T(
            f"{p}wpe.weight", (cfg.max_seq_len,), (d,), (cfg.max_seq_len, d)
        )
        for i in range(cfg.n_layers):
            L, b = f"layers/{i}", f"{p}h.{i}"
            norm(f"{L}/attn_norm", f"{b}.ln_1")
            norm(f"{L}/mlp_norm", f"{b}.ln_2")
            for j, n in enumerate("qkv"):
                plan[f"{L}/attn/{n}/kernel"] = T(
                    f"{b}.attn.c_attn.weight", (d,), (h, hd), (d, 3 * d), offset=j * d
                )
                plan[f"{L}/attn/{n}/bias"] = T(
                    f"{b}.attn.c_attn.bias", (), (h, hd), (3 * d,), offset=j * d
                )
            plan[f"{L}/attn/o/kernel"] = T(f"{b}.attn.c_proj.weight", (h, hd), (d,), (d, d))
            plan[f"{L}/attn/o/bias"] = T(f"{b}.attn.c_proj.bias", (), (d,), (d,))
            plan[f"{L}/mlp/up/kernel"] = T(f"{b}.mlp.c_fc.weight", (d,), (f,), (d, f))
            plan[f"{L}/mlp/up/bias"] = T(f"{b}.mlp.c_fc.bias", (), (f,), (f,))
            plan[f"{L}/mlp/down/kernel"] = T(f"{b}.mlp.c_proj.weight", (f,), (d,), (f, d))
            plan[f"{L}/mlp/down/bias"] = T(f"{b}.mlp.c_proj.bias", (), (d,), (d,))
        norm("final_norm", f"{p}ln_f")
    elif family in ("llama", "qwen2", "gemma", "gemma3_text"):
        p = "model." if prefix is None else prefix
        plan["embed/tokens"] = T(f"{p}embed_tokens.weight", (v,), (d,), (v, d))
        for i in range(cfg.n_layers):
            L, b = f"layers/{i}", f"{p}layers.{i}"
            norm(f"{L}/attn_norm", f"{b}.input_layernorm")
            if cfg.post_norms:  # Gemma 2/3: four norms per layer
                norm(f"{L}/attn_post_norm", f"{b}.post_attention_layernorm")
                norm(f"{L}/mlp_norm", f"{b}.pre_feedforward_layernorm")
                norm(f"{L}/mlp_post_norm", f"{b}.post_feedforward_layernorm")
            else:
                norm(f"{L}/mlp_norm", f"{b}.post_attention_layernorm")
            if cfg.qk_norm:  # Gemma 3: per-head query / key RMSNorm
                for n in ("q", "k"):
                    name = f"{b}.self_attn.{n}_norm.weight"
                    plan[f"{L}/attn/{n}_norm/scale"] = T(name, (), (hd,), (hd,))
            for n, heads in (("q", h), ("k", kv), ("v", kv)):
                name = f"{b}.self_attn.{n}_proj"
                plan[f"{L}/attn/{n}/kernel"] = T(
                    f"{name}.weight", (d,), (heads, hd), (heads * hd, d), torch_linear=True
                )
                if cfg.attn_bias:
                    plan[f"{L}/attn/{n}/bias"] = T(f"{name}.bias", (), (heads, hd), (heads * hd,))
            plan[f"{L}/attn/o/kernel"] = T(
                f"{b}.self_attn.o_proj.weight", (h, hd), (d,), (d, h * hd), torch_linear=True
            )
            if cfg.attn_out_bias:
                plan[f"{L}/attn/o/bias"] = T(f"{b}.self_attn.o_proj.bias", (), (d,), (d,))
            for n, (fi, fo) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                name = f"{b}.mlp.{n}_proj"
                plan[f"{L}/mlp/{n}/kernel"] = T(
                    f"{name}.weight", (fi,), (fo,), (fo, fi), torch_linear=True
                )
                if cfg.mlp_bias:
                    plan[f"{L}/mlp/{n}/bias"] = T(f"{name}.bias", (), (fo,), (fo,))
        norm("final_norm", f"{p}norm")
    else:
        raise HFConversionError(f"unknown family {family!r}; supported: {list(FAMILIES)}")
    if not cfg.tie_embeddings:
        plan["lm_head/kernel"] = T("lm_head.weight", (d,), (v,), (v, d), torch_linear=True)
    expected = set(flatten(per_layer_specs(param_specs(cfg))))
    if set(plan) != expected:  # the family checks should make this impossible
        raise HFConversionError(
            f"{family}: no Hugging Face tensor for {sorted(expected - set(plan))}; "
            f"unexpected {sorted(set(plan) - expected)}"
        )
    return plan


def _span(idx: tuple[slice, ...], dims: tuple[int, ...]) -> tuple[int, int, tuple[Any, ...]]:
    """For index `idx` into dims (a group of dims flattened into one stored axis), returns
    (flat start, flat stop) of a block covering it and the slices that cut it out of that block
    reshaped to (rows of dims[0], *dims[1:])."""
    if not dims:
        return 0, 1, ()
    start, stop, step = idx[0].indices(dims[0])
    if step != 1:
        raise HFConversionError(f"strided shard index {idx} is not supported")
    rest = math.prod(dims[1:])
    return start * rest, stop * rest, (slice(None), *idx[1:])


def read_param_slice(
    reader: SafetensorsReader, src: TensorSource, index: tuple[slice, ...], dtype: Any
) -> np.ndarray:
    """Returns the part `index` of the jaxknow parameter described by `src`, as `dtype`,
    reading only the stored bytes it needs."""
    n_in = len(src.in_shape)
    i0, i1, in_sub = _span(index[:n_in], src.in_shape)
    o0, o1, out_sub = _span(index[n_in:], src.out_shape)
    o0, o1 = o0 + src.offset, o1 + src.offset
    if n_in == 0:
        block = reader.read(src.name, (slice(o0, o1),))
    elif src.torch_linear:
        block = reader.read(src.name, (slice(o0, o1), slice(i0, i1))).T
    else:
        block = reader.read(src.name, (slice(i0, i1), slice(o0, o1)))
    shape = []
    if n_in:
        shape += [(i1 - i0) // max(1, math.prod(src.in_shape[1:])), *src.in_shape[1:]]
    shape += [(o1 - o0) // max(1, math.prod(src.out_shape[1:])), *src.out_shape[1:]]
    return np.ascontiguousarray(block.reshape(shape)[(*in_sub, *out_sub)].astype(dtype))


def check_tensors(
    reader: SafetensorsReader, plan: Mapping[str, TensorSource], family: str, cfg: ModelConfig
) -> None:
    """Raises HFConversionError listing every missing tensor, every unexpected one, and every
    shape or dtype mismatch between the checkpoint and the model its config describes."""
    wanted: dict[str, tuple[int, ...]] = {}
    for src in plan.values():
        wanted[src.name] = src.stored_shape
    stored = set(reader.names())
    missing = sorted(set(wanted) - stored)
    ignored = [n for n in stored if _IGNORED_TENSORS.search(n)]
    if cfg.tie_embeddings:  # a tied head saved anyway is the embedding again
        ignored += [n for n in stored if n == "lm_head.weight"]
    extra = sorted(stored - set(wanted) - set(ignored))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {missing}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensor(s): {extra}")
    for name, shape in wanted.items():
        if name not in stored:
            continue
        if reader.shape(name) != shape:
            problems.append(f"{name}: shape {list(reader.shape(name))}, expected {list(shape)}")
        if reader.dtype_code(name) not in _FLOAT_CODES:
            problems.append(f"{name}: dtype {reader.dtype_code(name)} is not floating point")
    if problems:
        raise HFConversionError(
            f"{reader.directory}: the checkpoint does not match its {family} config: "
            + "; ".join(problems)
        )


def _to_host(x: Any) -> np.ndarray:
    """Returns the whole array on the host (gathered across processes when needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def stored_tensor(
    sources: Sequence[tuple[str, TensorSource]], flat: Mapping[str, Any], dtype: np.dtype
) -> np.ndarray:
    """Returns one Hugging Face tensor assembled from the jaxknow parameters stored in it
    (`sources`: by per-layer path; `flat`: the flattened parameters, layers stacked)."""
    shape = sources[0][1].stored_shape
    out = np.zeros(shape, dtype)
    filled = 0
    for path, src in sources:
        kind, layer = split_layer_path(path)
        a = _to_host(flat[kind] if layer is None else flat[kind][layer]).astype(dtype)
        n_out = math.prod(src.out_shape)
        sl = slice(src.offset, src.offset + n_out)
        if not src.in_shape:
            out[sl] = a.reshape(n_out)
        elif src.torch_linear:
            out[sl, :] = a.reshape(-1, n_out).T
        else:
            out[:, sl] = a.reshape(-1, n_out)
        filled += a.size
    if filled != out.size:
        raise HFConversionError(
            f"{sources[0][1].name}: only {filled} of {out.size} values come from the model"
        )
    return out
