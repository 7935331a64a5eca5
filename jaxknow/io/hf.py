"""Hugging Face interop: import causal-LM checkpoints (GPT-2, Llama, Qwen2, Gemma) into
jaxknow, export jaxknow models back to the Hugging Face layout, and score token sequences.

Import streams: every jaxknow parameter is built with `jax.make_array_from_callback` in its
target sharding, and each callback reads only its slice of the source tensor straight from the
memory-mapped `*.safetensors` files (bf16 included), so the whole model never sits on one device
or in host memory at once. Export gathers one tensor at a time and writes safetensors shards.

The Hugging Face tensors and the jaxknow parameters are tied together by one table per family
(`tensor_plan`): each jaxknow parameter is a [in dims..., out dims...] view of a stored matrix,
stored either [in, out] (GPT-2's Conv1D, embeddings) or [out, in] (torch Linear), possibly at an
offset along the out axis (GPT-2's fused q/k/v projection).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging
from jax.sharding import Mesh

from jaxknow.model.config import ModelConfig, ModelConfigError
from jaxknow.model.params import flatten, param_axes, param_shapes, param_specs, unflatten
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, tree_shardings

FAMILIES = ("gpt2", "llama", "qwen2", "gemma")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}
# Files of a Hugging Face tokenizer that travel with the model in both directions.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"

# Stored tensors that are buffers, not parameters: GPT-2's causal mask, cached rotary tables.
_IGNORED_TENSORS = re.compile(r"(\.attn\.(bias|masked_bias)|rotary_emb\.inv_freq)$")

_ST_DTYPES: dict[str, Any] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")
_NP_DTYPES = {"float32": np.dtype("float32"), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype("float16")}


def _write_atomic(path: Path, text: str) -> None:
    """Writes a text file atomically (temporary file, then rename)."""
    from jaxknow.data.jsonl import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


class HFConversionError(ValueError):
    """A Hugging Face checkpoint or a jaxknow model cannot be converted; the message says why
    (unsupported family, missing or unexpected tensors, shape mismatch, ...)."""


# --- config mapping -----------------------------------------------------------------------
def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns the parsed `config.json` of a Hugging Face model directory."""
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise FileNotFoundError(f"Hugging Face model directory not found: {hf_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFConversionError(f"{path}: not valid JSON ({e})") from None


def family_of(hf_config: Mapping[str, Any]) -> str:
    """Returns the jaxknow family name ("gpt2", "llama", "qwen2", "gemma") of a Hugging Face
    config; raises HFConversionError naming the model type and listing the supported ones."""
    model_type = hf_config.get("model_type")
    archs = list(hf_config.get("architectures") or [])
    supported = ", ".join(f"{f} ({ARCHITECTURES[f]})" for f in FAMILIES)
    if model_type not in FAMILIES:
        raise HFConversionError(
            f"unsupported Hugging Face model_type {model_type!r} (architectures {archs}); "
            f"supported: {supported}")
    if archs and archs[0] != ARCHITECTURES[model_type]:
        raise HFConversionError(
            f"unsupported architecture {archs[0]!r} for model_type {model_type!r}; "
            f"supported: {supported}")
    return model_type


def _rope(hf: Mapping[str, Any]) -> tuple[float, dict[str, float] | None]:
    """Returns (rope_theta, Llama 3 scaling or None) from a v4 (rope_theta/rope_scaling) or
    v5 (rope_parameters) style config."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    scaling = legacy or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = float(hf.get("partial_rotary_factor", scaling.get("partial_rotary_factor", 1.0)))
    if factor != 1.0:
        raise HFConversionError(f"partial_rotary_factor={factor} is not supported")
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise HFConversionError(
            f"rope scaling type {kind!r} is not supported (supported: default, llama3)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise HFConversionError(f"llama3 rope scaling is missing {missing}")
    out = {k: float(scaling[k]) for k in keys[:3]}
    out["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return theta, out


def _tanh_gelu(act: str, where: str) -> bool:
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return True
    if act == "gelu":
        return False
    raise HFConversionError(f"{where}={act!r} is not supported (gelu, gelu_new, "
                            "gelu_pytorch_tanh)")


def model_config_from_hf(hf: Mapping[str, Any], *, param_dtype: str = "float32",
                         dtype: str | None = None) -> tuple[str, ModelConfig]:
    """Returns (family, ModelConfig) for a Hugging Face `config.json` dict.

    `param_dtype` is the storage dtype of the converted parameters; `dtype` the compute dtype
    (default: `param_dtype`). Raises HFConversionError for configs jaxknow cannot express.
    """
    family = family_of(hf)
    common: dict[str, Any] = dict(param_dtype=param_dtype, dtype=dtype or param_dtype,
                                  init_std=float(hf.get("initializer_range", 0.02)))
    if family == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise HFConversionError("gpt2: scale_attn_by_inverse_layer_idx=true is not supported")
        if hf.get("scale_attn_weights") is False:
            raise HFConversionError("gpt2: scale_attn_weights=false is not supported")
        if hf.get("add_cross_attention"):
            raise HFConversionError("gpt2: add_cross_attention=true is not supported")
        d = int(hf["n_embd"])
        fields = dict(
            vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["n_layer"]),
            n_heads=int(hf["n_head"]), d_ff=int(hf.get("n_inner") or 4 * d),
            max_seq_len=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            pos_embedding="learned", norm="layernorm", norm_bias=True,
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="gelu",
            gelu_approximate=_tanh_gelu(hf.get("activation_function", "gelu_new"),
                                        "gpt2: activation_function"),
            mlp_bias=True, attn_bias=True, attn_out_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )
    else:
        if family == "qwen2" and hf.get("use_sliding_window"):
            raise HFConversionError("qwen2: use_sliding_window=true is not supported")
        d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        kv = int(hf.get("num_key_value_heads") or h)
        hd = int(hf.get("head_dim") or (256 if family == "gemma" else d // h))
        theta, scaling = _rope(hf)
        if family == "gemma":
            act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
            # Gemma's legacy "gelu" means the tanh approximation (as in transformers).
            if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new"):
                raise HFConversionError(f"gemma: hidden activation {act!r} is not supported")
        elif hf.get("hidden_act", "silu") != "silu":
            raise HFConversionError(
                f"{family}: hidden_act={hf.get('hidden_act')!r} is not supported (silu)")
        bias = bool(hf.get("attention_bias", False))
        fields = dict(
            vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]),
            n_heads=h, n_kv_heads=kv if kv != h else None,
            head_dim=hd if (d % h or hd != d // h) else None,
            d_ff=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 8192)),
            pos_embedding="rope", rope_theta=theta, rope_scaling=scaling, norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            attn_bias=True if family == "qwen2" else bias,
            attn_out_bias=False if family == "qwen2" else bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) if family == "llama" else False,
            tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma")),
        )
        if family == "gemma":
            fields.update(mlp="geglu", gelu_approximate=True, norm_scale_offset=1.0,
                          embed_scale=True)
        else:
            fields.update(mlp="swiglu")
    try:
        return family, ModelConfig(**fields, **common)
    except ModelConfigError as e:
        raise HFConversionError(f"{family} config cannot be expressed: {e}") from None


def family_mismatches(cfg: ModelConfig, family: str) -> list[str]:
    """Returns what keeps `cfg` from being a model of `family` (empty when it is one)."""
    if family not in FAMILIES:
        raise HFConversionError(f"unknown family {family!r}; supported: {list(FAMILIES)}")
    out: list[str] = []

    def need(field: str, value: Any) -> None:
        if getattr(cfg, field) != value:
            out.append(f"{field}={getattr(cfg, field)!r} (needs {value!r})")

    default_scale = cfg.dim_per_head ** -0.5
    if cfg.attn_scale is not None and not math.isclose(cfg.attn_scale, default_scale):
        out.append(f"attn_scale={cfg.attn_scale!r} (needs 1/sqrt(head_dim))")
    need("embed_scale", family == "gemma")
    need("norm_scale_offset", 1.0 if family == "gemma" else 0.0)
    if family == "gpt2":
        for f, v in (("pos_embedding", "learned"), ("norm", "layernorm"), ("norm_bias", True),
                     ("mlp", "gelu"), ("mlp_bias", True), ("attn_bias", True),
                     ("attn_out_bias", True)):
            need(f, v)
        if cfg.kv_heads != cfg.n_heads:
            out.append(f"n_kv_heads={cfg.n_kv_heads} (needs n_heads={cfg.n_heads})")
        if cfg.dim_per_head * cfg.n_heads != cfg.d_model:
            out.append(f"head_dim={cfg.head_dim} (needs d_model / n_heads)")
        return out
    need("pos_embedding", "rope")
    need("norm", "rmsnorm")
    need("mlp", "geglu" if family == "gemma" else "swiglu")
    if family == "qwen2":
        need("attn_bias", True)
        need("attn_out_bias", False)
        need("mlp_bias", False)
        need("rope_scaling", None)
    else:
        if cfg.attn_bias != cfg.attn_out_bias:
            out.append(f"attn_bias={cfg.attn_bias} with attn_out_bias={cfg.attn_out_bias} "
                       "(needs both or neither)")
    if family == "gemma":
        need("tie_embeddings", True)
        need("mlp_bias", False)
        need("rope_scaling", None)
    return out


def detect_family(cfg: ModelConfig) -> str:
    """Returns the Hugging Face family a jaxknow ModelConfig matches; raises
    HFConversionError listing, for each family, why it does not match."""
    why = {}
    for family in ("gemma", "qwen2", "llama", "gpt2"):
        bad = family_mismatches(cfg, family)
        if not bad:
            return family
        why[family] = bad
    detail = "; ".join(f"{f}: {', '.join(b[:3])}" for f, b in why.items())
    raise HFConversionError(f"the model matches no Hugging Face family ({detail})")


def hf_config_from_model(cfg: ModelConfig, family: str, *, dtype: str | None = None,
                         token_ids: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """Returns the Hugging Face `config.json` dict of a jaxknow model of `family`.

    Rotary settings are written the transformers-4 way (`rope_theta`, `rope_scaling`), which
    transformers 5 also reads. `token_ids` may hold bos_token_id / eos_token_id / pad_token_id.
    """
    bad = family_mismatches(cfg, family)
    if bad:
        raise HFConversionError(f"the model is not a {family} model: {', '.join(bad)}")
    c = cfg
    out: dict[str, Any] = {"architectures": [ARCHITECTURES[family]], "model_type": family}
    if family == "gpt2":
        out.update(
            vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model,
            n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff,
            activation_function="gelu_new" if c.gelu_approximate else "gelu",
            layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
            scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
        )
    else:
        out.update(
            vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
            num_key_value_heads=c.kv_heads, head_dim=c.dim_per_head,
            max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        )
        if family == "gemma":
            out.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                       attention_bias=c.attn_bias)
        else:
            out["hidden_act"] = "silu"
        if family == "llama":
            out.update(attention_bias=c.attn_bias, mlp_bias=c.mlp_bias, pretraining_tp=1)
            out["rope_scaling"] = (None if c.rope_scaling is None
                                   else {"rope_type": "llama3", **dict(c.rope_scaling)})
        if family == "qwen2":
            out.update(use_sliding_window=False, max_window_layers=c.n_layers)
    out.update(initializer_range=c.init_std, use_cache=True,
               torch_dtype=dtype or c.param_dtype)
    for k, v in (token_ids or {}).items():
        if v is not None:
            out[k] = v
    return out


# --- the tensor table -----------------------------------------------------------------------
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


def _gpt2_prefix(names: Sequence[str]) -> str:
    return "transformer." if any(n.startswith("transformer.") for n in names) else ""


def tensor_plan(family: str, cfg: ModelConfig, prefix: str | None = None
                ) -> dict[str, TensorSource]:
    """Returns {jaxknow parameter path: TensorSource} for a model of `family`.

    `prefix` is the stored names' prefix ("transformer." or "model."; GPT-2 checkpoints also
    come without one); default: the family's usual prefix.
    """
    d, h, kv, hd, f, v = (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff,
                          cfg.vocab_size)
    plan: dict[str, TensorSource] = {}
    T = TensorSource

    def norm(path: str, name: str) -> None:
        plan[f"{path}/scale"] = T(f"{name}.weight", (), (d,), (d,))
        if cfg.norm == "layernorm" and cfg.norm_bias:
            plan[f"{path}/bias"] = T(f"{name}.bias", (), (d,), (d,))

    if family == "gpt2":
        p = "transformer." if prefix is None else prefix
        plan["embed/tokens"] = T(f"{p}wte.weight", (v,), (d,), (v, d))
        plan["embed/positions"] = T(f"{p}wpe.weight", (cfg.max_seq_len,), (d,),
                                    (cfg.max_seq_len, d))
        for i in range(cfg.n_layers):
            L, b = f"layers/{i}", f"{p}h.{i}"
            norm(f"{L}/attn_norm", f"{b}.ln_1")
            norm(f"{L}/mlp_norm", f"{b}.ln_2")
            for j, n in enumerate("qkv"):
                plan[f"{L}/attn/{n}/kernel"] = T(f"{b}.attn.c_attn.weight", (d,), (h, hd),
                                                 (d, 3 * d), offset=j * d)
                plan[f"{L}/attn/{n}/bias"] = T(f"{b}.attn.c_attn.bias", (), (h, hd), (3 * d,),
                                               offset=j * d)
            plan[f"{L}/attn/o/kernel"] = T(f"{b}.attn.c_proj.weight", (h, hd), (d,), (d, d))
            plan[f"{L}/attn/o/bias"] = T(f"{b}.attn.c_proj.bias", (), (d,), (d,))
            plan[f"{L}/mlp/up/kernel"] = T(f"{b}.mlp.c_fc.weight", (d,), (f,), (d, f))
            plan[f"{L}/mlp/up/bias"] = T(f"{b}.mlp.c_fc.bias", (), (f,), (f,))
            plan[f"{L}/mlp/down/kernel"] = T(f"{b}.mlp.c_proj.weight", (f,), (d,), (f, d))
            plan[f"{L}/mlp/down/bias"] = T(f"{b}.mlp.c_proj.bias", (), (d,), (d,))
        norm("final_norm", f"{p}ln_f")
    elif family in ("llama", "qwen2", "gemma"):
        p = "model." if prefix is None else prefix
        plan["embed/tokens"] = T(f"{p}embed_tokens.weight", (v,), (d,), (v, d))
        for i in range(cfg.n_layers):
            L, b = f"layers/{i}", f"{p}layers.{i}"
            norm(f"{L}/attn_norm", f"{b}.input_layernorm")
            norm(f"{L}/mlp_norm", f"{b}.post_attention_layernorm")
            for n, heads in (("q", h), ("k", kv), ("v", kv)):
                name = f"{b}.self_attn.{n}_proj"
                plan[f"{L}/attn/{n}/kernel"] = T(f"{name}.weight", (d,), (heads, hd),
                                                 (heads * hd, d), torch_linear=True)
                if cfg.attn_bias:
                    plan[f"{L}/attn/{n}/bias"] = T(f"{name}.bias", (), (heads, hd),
                                                   (heads * hd,))
            plan[f"{L}/attn/o/kernel"] = T(f"{b}.self_attn.o_proj.weight", (h, hd), (d,),
                                           (d, h * hd), torch_linear=True)
            if cfg.attn_out_bias:
                plan[f"{L}/attn/o/bias"] = T(f"{b}.self_attn.o_proj.bias", (), (d,), (d,))
            for n, (fi, fo) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                name = f"{b}.mlp.{n}_proj"
                plan[f"{L}/mlp/{n}/kernel"] = T(f"{name}.weight", (fi,), (fo,), (fo, fi),
                                                torch_linear=True)
                if cfg.mlp_bias:
                    plan[f"{L}/mlp/{n}/bias"] = T(f"{name}.bias", (), (fo,), (fo,))
        norm("final_norm", f"{p}norm")
    else:
        raise HFConversionError(f"unknown family {family!r}; supported: {list(FAMILIES)}")
    if not cfg.tie_embeddings:
        plan["lm_head/kernel"] = T("lm_head.weight", (d,), (v,), (v, d), torch_linear=True)
    expected = set(flatten(param_specs(cfg)))
    if set(plan) != expected:  # the family checks should make this impossible
        raise HFConversionError(
            f"{family}: no Hugging Face tensor for {sorted(expected - set(plan))}; "
            f"unexpected {sorted(set(plan) - expected)}")
    return plan


# --- reading safetensors ------------------------------------------------------------------
class SafetensorsReader:
    """Lazy, memory-mapped access to the tensors of a Hugging Face model directory: one
    `model.safetensors`, shards listed by `model.safetensors.index.json`, or any
    `*.safetensors` files. Reading a slice touches only the bytes of that slice."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        files = self._files()
        self._entries: dict[str, tuple[Path, str, tuple[int, ...], int, int]] = {}
        self._maps: dict[Path, np.memmap] = {}
        for file in files:
            try:
                with open(file, "rb") as fh:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    header = json.loads(fh.read(n))
            except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise HFConversionError(f"{file}: not a readable safetensors file ({e})") from None
            base = 8 + n
            size = file.stat().st_size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                try:
                    start, end = info["data_offsets"]
                    expected = math.prod(info["shape"]) * np.dtype(
                        _ST_DTYPES.get(info["dtype"], np.uint8)).itemsize
                except (KeyError, TypeError, ValueError) as e:
                    raise HFConversionError(f"{file}: tensor {name!r} has a malformed header "
                                            f"entry ({e})") from None
                if base + end > size:
                    raise HFConversionError(
                        f"{file}: truncated (tensor {name!r} ends at byte {base + end}, the "
                        f"file has {size} bytes)")
                if info["dtype"] in _ST_DTYPES and end - start != expected:
                    raise HFConversionError(
                        f"{file}: tensor {name!r} holds {end - start} bytes, its shape "
                        f"{info['shape']} and dtype {info['dtype']} need {expected}")
                if name in self._entries:
                    raise HFConversionError(
                        f"tensor {name!r} is stored twice ({self._entries[name][0].name} and "
                        f"{file.name})")
                start, end = info["data_offsets"]
                self._entries[name] = (file, info["dtype"], tuple(info["shape"]), base + start,
                                       base + end)

    def _files(self) -> list[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted({self.directory / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shard file(s) that do not exist: "
                                        f"{missing}")
            return files
        single = self.directory / "model.safetensors"
        if single.is_file():
            return [single]
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            extra = (" (pytorch_model.bin checkpoints are not supported: re-save the model with "
                     "save_pretrained(..., safe_serialization=True))"
                     if any(self.directory.glob("*.bin")) else "")
            raise FileNotFoundError(f"no *.safetensors files in {self.directory}{extra}")
        return files

    def names(self) -> list[str]:
        """Returns the stored tensor names."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns the stored shape of a tensor."""
        return self._entries[name][2]

    def dtype_code(self, name: str) -> str:
        """Returns the safetensors dtype code ("F32", "BF16", ...) of a tensor."""
        return self._entries[name][1]

    def array(self, name: str) -> np.ndarray:
        """Returns a lazy read-only memory-mapped view of a tensor (slicing it reads only the
        slice)."""
        file, code, shape, start, end = self._entries[name]
        if code not in _ST_DTYPES:
            raise HFConversionError(f"tensor {name!r} has unsupported dtype {code}")
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        raw = self._maps[file][start:end]
        return raw.view(_ST_DTYPES[code]).reshape(shape)

    def close(self) -> None:
        """Releases the memory maps."""
        self._maps.clear()


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


def read_param_slice(reader: SafetensorsReader, src: TensorSource, index: tuple[slice, ...],
                     dtype: Any) -> np.ndarray:
    """Returns the part `index` of the jaxknow parameter described by `src`, as `dtype`,
    reading only the stored bytes it needs."""
    n_in = len(src.in_shape)
    i0, i1, in_sub = _span(index[:n_in], src.in_shape)
    o0, o1, out_sub = _span(index[n_in:], src.out_shape)
    o0, o1 = o0 + src.offset, o1 + src.offset
    stored = reader.array(src.name)
    if n_in == 0:
        block = np.asarray(stored[o0:o1])
    elif src.torch_linear:
        block = np.asarray(stored[o0:o1, i0:i1]).T
    else:
        block = np.asarray(stored[i0:i1, o0:o1])
    shape = []
    if n_in:
        shape += [(i1 - i0) // max(1, math.prod(src.in_shape[1:])), *src.in_shape[1:]]
    shape += [(o1 - o0) // max(1, math.prod(src.out_shape[1:])), *src.out_shape[1:]]
    return np.ascontiguousarray(block.reshape(shape)[(*in_sub, *out_sub)].astype(dtype))


def check_tensors(reader: SafetensorsReader, plan: Mapping[str, TensorSource], family: str,
                  cfg: ModelConfig) -> None:
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
            + "; ".join(problems))


@dataclasses.dataclass
class HFModel:
    """An imported model: jaxknow parameters (sharded on the mesh), its config, its family and
    the original Hugging Face config."""

    params: Any
    cfg: ModelConfig
    family: str
    hf_config: dict[str, Any]


def load_hf_params(hf_dir: str | os.PathLike, mesh: Mesh | None = None, *,
                   param_dtype: str = "float32", dtype: str | None = None,
                   rules: Rules = DEFAULT_RULES) -> HFModel:
    """Returns the HFModel of a Hugging Face directory, each parameter streamed from the
    safetensors files straight into its sharding on `mesh` (default: all devices, replicated).
    """
    from jaxknow.parallel.mesh import make_mesh

    if param_dtype not in _NP_DTYPES:
        raise HFConversionError(f"param_dtype={param_dtype!r}: must be one of {list(_NP_DTYPES)}")
    hf = read_hf_config(hf_dir)
    family, cfg = model_config_from_hf(hf, param_dtype=param_dtype, dtype=dtype)
    reader = SafetensorsReader(hf_dir)
    try:
        prefix = _gpt2_prefix(reader.names()) if family == "gpt2" else None
        plan = tensor_plan(family, cfg, prefix)
        check_tensors(reader, plan, family, cfg)
        mesh = mesh or make_mesh(-1, 1, 1)
        specs = param_specs(cfg)
        target = _NP_DTYPES[param_dtype]
        shardings = flatten(tree_shardings(param_axes(specs), param_shapes(specs, target),
                                           mesh, rules))
        flat_specs = flatten(specs)
        out = {}
        for path, spec in flat_specs.items():
            src = plan[path]
            cache: dict[Any, np.ndarray] = {}  # replicas ask for the same block

            def cb(index: tuple[slice, ...], src: TensorSource = src,
                   cache: dict[Any, np.ndarray] = cache, shape: tuple[int, ...] = spec.shape
                   ) -> np.ndarray:
                key = tuple(s.indices(n) for s, n in zip(index, shape))
                if key not in cache:
                    cache[key] = read_param_slice(reader, src, tuple(index), target)
                return cache[key]

            out[path] = jax.make_array_from_callback(spec.shape, shardings[path], cb)
            cache.clear()
        return HFModel(params=unflatten(out), cfg=cfg, family=family, hf_config=hf)
    finally:
        reader.close()


# --- destinations ---------------------------------------------------------------------------
class DestinationError(HFConversionError):
    """The destination folder cannot be written (not empty without overwrite, a file, or the
    source itself)."""


def _is_within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _prepare_destination(dst: Path, src: Path, overwrite: bool) -> Path:
    """Checks `dst` may be written; returns the temporary sibling folder to write into."""
    dst, src = dst.absolute(), src.absolute()
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"destination {dst} exists and is not a directory")
    if _is_within(src.resolve(), dst.resolve()):
        raise DestinationError(f"destination {dst} would replace the source {src}")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise DestinationError(
            f"destination {dst} is not empty; pass --overwrite to replace it")
    tmp = dst.parent / f".{dst.name}.partial"
    if jax.process_index() == 0:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by an interrupted conversion
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier("jaxknow_hf_tmp")
    return tmp


def _finalize_destination(tmp: Path, dst: Path) -> None:
    """Moves the finished temporary folder to `dst` (replacing what was there)."""
    dst = dst.absolute()
    _barrier("jaxknow_hf_written")
    if jax.process_index() == 0:
        old = dst.parent / f".{dst.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        if old.exists():
            shutil.rmtree(old)
    _barrier("jaxknow_hf_done")


def _abandon(tmp: Path) -> None:
    if jax.process_index() == 0 and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --- import ---------------------------------------------------------------------------------
def _copy_tokenizer_files(src: Path, dst: Path) -> bool:
    """Copies the Hugging Face tokenizer files found in `src` to `dst`; returns True when
    there was a tokenizer.json."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return (src / "tokenizer.json").is_file()


def _write_special_tokens(hf_dir: Path, dst: Path, hf: Mapping[str, Any]) -> None:
    """Writes jaxknow's special_tokens.json (bos/eos/pad ids) for the copied tokenizer."""
    from jaxknow.data.tokenizer import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(hf_dir)
    except TokenizerError as e:
        logging.warning("tokenizer special ids unknown (%s); load_model will guess them", e)
        return
    n = tok.vocab_size
    ok = lambda i: i if isinstance(i, int) and 0 <= i < n else None
    bos, eos = ok(tok.bos_id), ok(tok.eos_id)
    if eos is None:
        logging.warning("eos id %s is outside the tokenizer's vocabulary; not recorded",
                        tok.eos_id)
        return
    pad = ok(hf.get("pad_token_id")) if ok(hf.get("pad_token_id")) is not None else eos
    _write_atomic(dst / "special_tokens.json",
                  json.dumps({"bos_id": bos, "eos_id": eos, "pad_id": pad}))


def hf_to_jaxknow(hf_dir: str | os.PathLike, dst: str | os.PathLike, *,
                  param_dtype: str = "float32", dtype: str | None = None,
                  mesh: Mesh | None = None, overwrite: bool = False) -> Path:
    """Converts a Hugging Face model directory into a jaxknow model directory; returns `dst`.

    `dst` gets `checkpoints/` (a parameters-only checkpoint whose metadata holds the model
    config, "source": "huggingface", the family and the original config) and the tokenizer
    files (tokenizer.json, plus special_tokens.json with the bos/eos/pad ids) so that
    `jaxknow.io.load.load_model(dst)` returns the model and its tokenizer. Parameters are
    streamed onto `mesh` (default: all devices, replicated) in `param_dtype`. A non-empty
    `dst` is only replaced with `overwrite`; the result appears at once when complete.
    """
    from jaxknow.io.checkpoint import save_params_checkpoint

    hf_dir, dst = Path(hf_dir).absolute(), Path(dst).absolute()
    read_hf_config(hf_dir)  # fail on a missing directory before touching dst
    tmp = _prepare_destination(dst, hf_dir, overwrite)
    try:
        model = load_hf_params(hf_dir, mesh, param_dtype=param_dtype, dtype=dtype)
        meta = {"model": model.cfg.to_dict(), "source": "huggingface", "family": model.family,
                "hf_config": model.hf_config, "hf_dir": str(hf_dir)}
        save_params_checkpoint(tmp, model.params, meta)
        if jax.process_index() == 0 and _copy_tokenizer_files(hf_dir, tmp):
            _write_special_tokens(hf_dir, tmp, model.hf_config)
        _finalize_destination(tmp, dst)
    except BaseException:
        _abandon(tmp)
        raise
    return dst


# --- export ---------------------------------------------------------------------------------
def parse_size(size: int | str) -> int:
    """Returns a byte count for an int or a string like "5GB", "500MB", "2GiB", "100KB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected bytes or e.g. '5GB', '500MB'")
    unit = (m.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    if unit not in powers:
        raise ValueError(f"max_shard_size={size!r}: unknown unit {m.group(2)!r}")
    return int(float(m.group(1)) * powers[unit])


def _st_code(dtype: np.dtype) -> str:
    for code, dt in _ST_DTYPES.items():
        if dt == dtype:
            return code
    raise HFConversionError(f"cannot store dtype {dtype} in safetensors")


def _to_host(x: Any) -> np.ndarray:
    """Returns the whole array on the host (gathered across processes when needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _stored_tensor(sources: Sequence[tuple[str, TensorSource]], flat: Mapping[str, Any],
                   dtype: np.dtype) -> np.ndarray:
    """Returns one Hugging Face tensor assembled from the jaxknow parameters stored in it."""
    shape = sources[0][1].stored_shape
    out = np.zeros(shape, dtype)
    filled = 0
    for path, src in sources:
        a = _to_host(flat[path]).astype(dtype)
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
        raise HFConversionError(f"{sources[0][1].name}: only {filled} of {out.size} values "
                                "come from the model")
    return out


def _write_safetensors(path: Path, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
                       dtype: np.dtype, produce: Callable[[str], np.ndarray],
                       write: bool) -> None:
    """Writes a safetensors file tensor by tensor (`produce` is called for every name, also
    where `write` is False, so that collectives inside it run on every process)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        n = math.prod(shapes[name]) * dtype.itemsize
        header[name] = {"dtype": _st_code(dtype), "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    fh = open(path, "wb") if write else None  # noqa: SIM115 (written tensor by tensor)
    try:
        if fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
        for name in names:
            arr = np.ascontiguousarray(produce(name))
            if fh:
                fh.write(memoryview(arr.reshape(-1).view(np.uint8)))
    finally:
        if fh:
            fh.close()


def _shard_names(names: Sequence[str], nbytes: Mapping[str, int], limit: int
                 ) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:
        if shards[-1] and size + nbytes[n] > limit:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes[n]
    return shards


def write_hf_model(params: Any, cfg: ModelConfig, dst: str | os.PathLike, family: str, *,
                   dtype: str | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                   token_ids: Mapping[str, int | None] | None = None) -> list[str]:
    """Writes `config.json` and the safetensors weights (one `model.safetensors`, or shards
    plus `model.safetensors.index.json` above `max_shard_size`) of a jaxknow model (without
    LoRA adapters) into the existing folder `dst`; returns the weight file names."""
    dst = Path(dst)
    dtype = dtype or cfg.param_dtype
    if dtype not in _NP_DTYPES:
        raise HFConversionError(f"dtype={dtype!r}: must be one of {list(_NP_DTYPES)}")
    np_dtype = _NP_DTYPES[dtype]
    hf = hf_config_from_model(cfg, family, dtype=dtype, token_ids=token_ids)
    plan = tensor_plan(family, cfg)
    flat = flatten(params)
    if set(flat) != set(plan):
        raise HFConversionError(
            f"the parameters do not match the model config: missing "
            f"{sorted(set(plan) - set(flat))}, unexpected {sorted(set(flat) - set(plan))}")
    by_name: dict[str, list[tuple[str, TensorSource]]] = {}
    for path, src in plan.items():
        by_name.setdefault(src.name, []).append((path, src))
    shapes = {n: s[0][1].stored_shape for n, s in by_name.items()}
    nbytes = {n: math.prod(shapes[n]) * np_dtype.itemsize for n in by_name}
    shards = _shard_names(list(by_name), nbytes, parse_size(max_shard_size))
    write = jax.process_index() == 0
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    produce = lambda name: _stored_tensor(by_name[name], flat, np_dtype)
    for file, names in zip(files, shards):
        _write_safetensors(dst / file, names, shapes, np_dtype, produce, write)
    if write:
        if len(files) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())},
                     "weight_map": {n: f for f, ns in zip(files, shards) for n in ns}}
            _write_atomic(dst / "model.safetensors.index.json", json.dumps(index, indent=2))
        _write_atomic(dst / "config.json", json.dumps(hf, indent=2))
    return files


def _token_ids(meta: Mapping[str, Any], tokenizer: Any) -> dict[str, int | None]:
    """Returns bos/eos/pad ids for config.json: the imported model's own, else the
    tokenizer's."""
    orig = meta.get("hf_config") or {}
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    if any(orig.get(k) is not None for k in keys):
        return {k: orig.get(k) for k in keys}
    if tokenizer is None:
        return {}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id}


def jaxknow_to_hf(src: str | os.PathLike, dst: str | os.PathLike, *, step: int | None = None,
                  family: str | None = None, dtype: str | None = None,
                  max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, mesh: Mesh | None = None,
                  overwrite: bool = False) -> Path:
    """Exports a jaxknow model (a converted model directory, a workdir, a checkpoints directory
    or one step directory) as a Hugging Face model directory; returns `dst`.

    LoRA adapters are merged into their kernels first. `family` defaults to the one recorded at
    import, else the one the config matches (HFConversionError when none does); `dtype`
    (default: the model's param_dtype) is the stored dtype. The tokenizer files found beside
    the checkpoints are copied. A non-empty `dst` is only replaced with `overwrite`.
    """
    from jaxknow.io.checkpoint import Checkpointer, resolve_checkpoint_dir
    from jaxknow.io.load import find_tokenizer, load_model
    from jaxknow.model.lora import is_lora_path, merge_lora

    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not src.exists():
        raise FileNotFoundError(f"jaxknow model not found: {src}")
    # Settle the family from the metadata before reading (possibly huge) parameters.
    directory, path_step = resolve_checkpoint_dir(src)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        meta = ckpt.read_meta(step if step is not None else path_step)
    finally:
        ckpt.close()
    if "model" not in meta:
        raise HFConversionError(f"checkpoint {directory} has no model config in its metadata")
    cfg = ModelConfig.from_dict(meta["model"])
    if family is None:
        recorded = meta.get("family")
        family = (recorded if recorded in FAMILIES and not family_mismatches(cfg, recorded)
                  else detect_family(cfg))
    hf_config_from_model(cfg, family)  # raises when the model is not of `family`
    tmp = _prepare_destination(dst, src, overwrite)
    try:
        model = load_model(src, mesh=mesh, step=step)
        cfg, params = model.cfg, model.params
        if any(is_lora_path(p) for p in flatten(params)):
            params = merge_lora(params, cfg)
        write_hf_model(params, cfg, tmp, family, dtype=dtype, max_shard_size=max_shard_size,
                       token_ids=_token_ids(model.meta, model.tokenizer))
        tok = find_tokenizer(model.path)
        if tok is not None and jax.process_index() == 0:
            shutil.copyfile(tok, tmp / "tokenizer.json")
            for name in TOKENIZER_FILES[1:]:
                if (tok.parent / name).is_file():
                    shutil.copyfile(tok.parent / name, tmp / name)
        _finalize_destination(tmp, dst)
    except BaseException:
        _abandon(tmp)
        raise
    return dst


# --- scoring and configs --------------------------------------------------------------------
def parse_token_list(text: str) -> list[int]:
    """Returns the token ids of a comma-separated list such as "1,2,3"; raises ValueError
    naming the first entry that is not an integer."""
    out = []
    for i, part in enumerate(text.split(",")):
        s = part.strip()
        try:
            out.append(int(s))
        except ValueError:
            raise ValueError(f"--tokens: entry {i} ({s!r}) is not an integer") from None
    return out


def check_tokens(tokens: Sequence[Any], cfg: ModelConfig) -> list[int]:
    """Returns `tokens` as a list of ints; raises ValueError naming the first value that is not
    an integer or lies outside [0, vocab_size), or a sequence the model cannot take."""
    out = []
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise ValueError(f"token {i} ({t!r}) is not an integer")
        if not 0 <= int(t) < cfg.vocab_size:
            raise ValueError(f"token {i} ({int(t)}) is outside the vocabulary "
                             f"[0, {cfg.vocab_size})")
        out.append(int(t))
    if not out:
        raise ValueError("no tokens to score")
    if cfg.pos_embedding == "learned" and len(out) > cfg.max_seq_len:
        raise ValueError(f"{len(out)} tokens exceed the model's max_seq_len={cfg.max_seq_len}")
    return out


def score_tokens(model: Any, tokens: Sequence[int]) -> np.ndarray:
    """Returns float32 logits [T, V] of one token sequence under a loaded model (a
    `jaxknow.io.load.LoadedModel`, or anything with `.params` and `.cfg`): row t holds the
    scores of the token following tokens[: t + 1]."""
    from jaxknow.model import transformer

    cfg = model.cfg
    ids = jnp.asarray([check_tokens(tokens, cfg)], jnp.int32)
    fn = jax.jit(lambda p, t: transformer.apply(p, t, cfg))
    return np.asarray(fn(model.params, ids)[0], np.float32)


def model_section(converted_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns the `model` config section (every ModelConfig field, preset None) matching the
    model stored in a converted (or trained) jaxknow directory, for `train.init_from`."""
    from jaxknow.io.load import checkpoint_model_config

    cfg = checkpoint_model_config(converted_dir).to_dict()
    return {"preset": None, **cfg}

