"""Hugging Face `config.json` <-> jaxknow ModelConfig for the supported causal-LM families
(GPT-2, Llama, Qwen2, Gemma, Gemma 3 text), and the error every Hugging Face conversion
raises."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxknow.model.config import ModelConfig, ModelConfigError

#: The supported families, named by their Hugging Face `model_type`.
FAMILIES = ("gpt2", "llama", "qwen2", "gemma", "gemma3_text")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_GEMMA3 = "gemma3_text"
_LOCAL, _GLOBAL = "sliding_attention", "full_attention"


class HFConversionError(ValueError):
    """A Hugging Face checkpoint or a jaxknow model cannot be converted; the message says why
    (unsupported family, missing or unexpected tensors, shape mismatch, ...)."""


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
    """Returns the jaxknow family name ("gpt2", "llama", "qwen2", "gemma", "gemma3_text") of a
    Hugging Face config; raises HFConversionError naming the model type and listing the
    supported ones."""
    model_type = hf_config.get("model_type")
    archs = list(hf_config.get("architectures") or [])
    supported = ", ".join(f"{f} ({ARCHITECTURES[f]})" for f in FAMILIES)
    if model_type not in FAMILIES:
        raise HFConversionError(
            f"unsupported Hugging Face model_type {model_type!r} (architectures {archs}); "
            f"supported: {supported}"
        )
    if archs and archs[0] != ARCHITECTURES[model_type]:
        raise HFConversionError(
            f"unsupported architecture {archs[0]!r} for model_type {model_type!r}; "
            f"supported: {supported}"
        )
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
    if kind == "linear":
        return theta, {"factor": float(scaling["factor"])}
    if kind != "llama3":
        raise HFConversionError(
            f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)"
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise HFConversionError(f"llama3 rope scaling is missing {missing}")
    out = {k: float(scaling[k]) for k in keys[:3]}
    out["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return theta, out


def _gemma3_rope(hf: Mapping[str, Any]) -> tuple[float, dict[str, float] | None, float]:
    """Returns (global rope_theta, global scaling or None, local rope base) of a Gemma 3
    config: transformers 5 style (`rope_parameters` per layer type) or transformers 4 style
    (`rope_theta`, `rope_scaling`, `rope_local_base_freq`). Local layers never scale."""
    params = dict(hf.get("rope_parameters") or {})
    if _GLOBAL in params or _LOCAL in params:
        full = dict(params.get(_GLOBAL) or {})
        local = dict(params.get(_LOCAL) or {})
    else:
        full = dict(hf.get("rope_scaling") or params)
        full.setdefault("rope_theta", hf.get("rope_theta", params.get("rope_theta", 1e6)))
        local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    local_kind = local.get("rope_type", local.get("type", "default"))
    if local_kind != "default":
        raise HFConversionError(f"gemma3: rope type {local_kind!r} on local layers")
    theta, scaling = _rope({"rope_parameters": {"rope_theta": 1e6, **full}})
    if scaling is not None and set(scaling) != {"factor"}:
        raise HFConversionError("gemma3: only linear rope scaling is supported")
    return theta, scaling, float(local.get("rope_theta", 10_000.0))


def _gemma3_layers(hf: Mapping[str, Any], n_layers: int) -> tuple[int | None, int | None]:
    """Returns (sliding_window, sliding_window_pattern) of a Gemma 3 config (`layer_types`,
    else `sliding_window_pattern`, default 6); raises HFConversionError when the layer types
    are not "every p-th layer global" (or all local, or all global)."""
    types = hf.get("layer_types")
    if types is None:
        p = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
        types = [_LOCAL if (i + 1) % p else _GLOBAL for i in range(n_layers)]
    types = list(types)
    if len(types) != n_layers or set(types) - {_LOCAL, _GLOBAL}:
        raise HFConversionError(f"gemma3: layer_types {types} for {n_layers} layers")
    if _LOCAL not in types:
        return None, None
    window = hf.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        raise HFConversionError(f"gemma3: sliding_window={window!r} with sliding layers")
    if _GLOBAL not in types:
        return window, None
    pattern = types.index(_GLOBAL) + 1
    if types != [_LOCAL if (i + 1) % pattern else _GLOBAL for i in range(n_layers)]:
        raise HFConversionError(
            f"gemma3: layer_types {types} are not every {pattern}th layer global"
        )
    return window, pattern


def _tanh_gelu(act: str, where: str) -> bool:
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return True
    if act == "gelu":
        return False
    raise HFConversionError(f"{where}={act!r} is not supported (gelu, gelu_new, gelu_pytorch_tanh)")


def _gemma3_fields(hf: Mapping[str, Any], n_layers: int, local_theta: float) -> dict[str, Any]:
    """Returns the ModelConfig fields of a Gemma 3 config beyond Gemma's."""
    if hf.get("use_bidirectional_attention"):
        raise HFConversionError("gemma3: use_bidirectional_attention=true is not supported")
    window, pattern = _gemma3_layers(hf, n_layers)
    cap = hf.get("final_logit_softcapping")
    # transformers' Gemma 3 attention ignores attn_logit_softcapping (unlike Gemma 2's), so
    # the model it defines has no attention soft-capping.
    return dict(
        qk_norm=True,
        post_norms=True,
        attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
        sliding_window=window,
        sliding_window_pattern=pattern,
        rope_local_theta=local_theta if window is not None else None,
        max_seq_len=int(hf.get("max_position_embeddings", 131_072)),
        final_logit_softcap=None if cap is None else float(cap),
    )


def model_config_from_hf(
    hf: Mapping[str, Any], *, param_dtype: str = "float32", dtype: str | None = None
) -> tuple[str, ModelConfig]:
    """Returns (family, ModelConfig) for a Hugging Face `config.json` dict.

    `param_dtype` is the storage dtype of the converted parameters; `dtype` the compute dtype
    (default: `param_dtype`). Raises HFConversionError for configs jaxknow cannot express.
    """
    family = family_of(hf)
    common: dict[str, Any] = dict(
        param_dtype=param_dtype,
        dtype=dtype or param_dtype,
        init_std=float(hf.get("initializer_range", 0.02)),
    )
    if family == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise HFConversionError("gpt2: scale_attn_by_inverse_layer_idx=true is not supported")
        if hf.get("scale_attn_weights") is False:
            raise HFConversionError("gpt2: scale_attn_weights=false is not supported")
        if hf.get("add_cross_attention"):
            raise HFConversionError("gpt2: add_cross_attention=true is not supported")
        d = int(hf["n_embd"])
        fields = dict(
            vocab_size=int(hf["vocab_size"]),
            d_model=d,
            n_layers=int(hf["n_layer"]),
            n_heads=int(hf["n_head"]),
            d_ff=int(hf.get("n_inner") or 4 * d),
            max_seq_len=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            pos_embedding="learned",
            norm="layernorm",
            norm_bias=True,
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            mlp="gelu",
            gelu_approximate=_tanh_gelu(
                hf.get("activation_function", "gelu_new"), "gpt2: activation_function"
            ),
            mlp_bias=True,
            attn_bias=True,
            attn_out_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )
    else:
        if family == "qwen2" and hf.get("use_sliding_window"):
            raise HFConversionError("qwen2: use_sliding_window=true is not supported")
        gemma = family in ("gemma", _GEMMA3)
        d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        kv = int(hf.get("num_key_value_heads") or h)
        hd = int(hf.get("head_dim") or (256 if gemma else d // h))
        if family == _GEMMA3:
            theta, scaling, local_theta = _gemma3_rope(hf)
        else:
            theta, scaling = _rope(hf)
        if gemma:
            act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
            # Gemma's legacy "gelu" means the tanh approximation (as in transformers).
            if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new"):
                raise HFConversionError(f"gemma: hidden activation {act!r} is not supported")
        elif hf.get("hidden_act", "silu") != "silu":
            raise HFConversionError(
                f"{family}: hidden_act={hf.get('hidden_act')!r} is not supported (silu)"
            )
        bias = bool(hf.get("attention_bias", False))
        fields = dict(
            vocab_size=int(hf["vocab_size"]),
            d_model=d,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=h,
            n_kv_heads=kv if kv != h else None,
            head_dim=hd if (d % h or hd != d // h) else None,
            d_ff=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 8192)),
            pos_embedding="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            attn_bias=True if family == "qwen2" else bias,
            attn_out_bias=False if family == "qwen2" else bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) if family == "llama" else False,
            tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        )
        if gemma:
            fields.update(
                mlp="geglu", gelu_approximate=True, norm_scale_offset=1.0, embed_scale=True
            )
        else:
            fields.update(mlp="swiglu")
        if family == _GEMMA3:
            fields.update(_gemma3_fields(hf, fields["n_layers"], local_theta))
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

    gemma = family in ("gemma", _GEMMA3)
    default_scale = cfg.dim_per_head**-0.5
    if (
        family != _GEMMA3  # Gemma 3 stores its scale (query_pre_attn_scalar)
        and cfg.attn_scale is not None
        and not math.isclose(cfg.attn_scale, default_scale)
    ):
        out.append(f"attn_scale={cfg.attn_scale!r} (needs 1/sqrt(head_dim))")
    need("embed_scale", gemma)
    need("norm_scale_offset", 1.0 if gemma else 0.0)
    if family == _GEMMA3:
        need("qk_norm", True)
        need("post_norms", True)
        need("attn_logit_softcap", None)  # transformers' Gemma 3 never applies it
        if cfg.rope_scaling is not None and set(cfg.rope_scaling) != {"factor"}:
            out.append(f"rope_scaling={dict(cfg.rope_scaling)!r} (needs None or linear)")
        if cfg.rope_scaling is not None and any(cfg.local_layers) and not cfg.rope_local_theta:
            out.append("rope_local_theta=None with rope_scaling (local layers never scale)")
    else:
        for f in (
            "qk_norm",
            "post_norms",
            "sliding_window",
            "attn_logit_softcap",
            "final_logit_softcap",
        ):
            need(f, False if f in ("qk_norm", "post_norms") else None)
    if family == "gpt2":
        for f, v in (
            ("pos_embedding", "learned"),
            ("norm", "layernorm"),
            ("norm_bias", True),
            ("mlp", "gelu"),
            ("mlp_bias", True),
            ("attn_bias", True),
            ("attn_out_bias", True),
        ):
            need(f, v)
        if cfg.kv_heads != cfg.n_heads:
            out.append(f"n_kv_heads={cfg.n_kv_heads} (needs n_heads={cfg.n_heads})")
        if cfg.dim_per_head * cfg.n_heads != cfg.d_model:
            out.append(f"head_dim={cfg.head_dim} (needs d_model / n_heads)")
        return out
    need("pos_embedding", "rope")
    need("norm", "rmsnorm")
    need("mlp", "geglu" if gemma else "swiglu")
    if family == "qwen2":
        need("attn_bias", True)
        need("attn_out_bias", False)
        need("mlp_bias", False)
        need("rope_scaling", None)
    else:
        if cfg.attn_bias != cfg.attn_out_bias:
            out.append(
                f"attn_bias={cfg.attn_bias} with attn_out_bias={cfg.attn_out_bias} "
                "(needs both or neither)"
            )
    if family == "gemma":
        need("tie_embeddings", True)
        need("mlp_bias", False)
        need("rope_scaling", None)
    return out


def detect_family(cfg: ModelConfig) -> str:
    """Returns the Hugging Face family a jaxknow ModelConfig matches; raises
    HFConversionError listing, for each family, why it does not match."""
    why = {}
    for family in (_GEMMA3, "gemma", "qwen2", "llama", "gpt2"):
        bad = family_mismatches(cfg, family)
        if not bad:
            return family
        why[family] = bad
    detail = "; ".join(f"{f}: {', '.join(b[:3])}" for f, b in why.items())
    raise HFConversionError(f"the model matches no Hugging Face family ({detail})")


def _rope_scaling_to_hf(cfg: ModelConfig) -> dict[str, Any] | None:
    """Returns the `rope_scaling` entry of a config.json (llama3, linear or None)."""
    sc = cfg.rope_scaling
    if sc is None:
        return None
    kind = "linear" if set(sc) == {"factor"} else "llama3"
    return {"rope_type": kind, **dict(sc)}


def _gemma3_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """Returns the Gemma 3 specific entries of a config.json (transformers 4 style rotary
    settings, which transformers 5 also reads; the layer types spelled out)."""
    scalar = cfg.dim_per_head if cfg.attn_scale is None else cfg.attn_scale**-2
    if not math.isclose(scalar, round(scalar), rel_tol=1e-9):
        raise HFConversionError(
            f"attn_scale={cfg.attn_scale!r}: query_pre_attn_scalar={scalar} is not an integer"
        )
    kinds = cfg.local_layers
    local_theta = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta
    return dict(
        query_pre_attn_scalar=round(scalar),
        sliding_window=cfg.sliding_window if cfg.sliding_window is not None else cfg.max_seq_len,
        layer_types=[_LOCAL if k else _GLOBAL for k in kinds],
        rope_local_base_freq=local_theta,
        rope_scaling=_rope_scaling_to_hf(cfg),
        attn_logit_softcapping=None,
        final_logit_softcapping=cfg.final_logit_softcap,
        use_bidirectional_attention=False,
    )


def hf_config_from_model(
    cfg: ModelConfig,
    family: str,
    *,
    dtype: str | None = None,
    token_ids: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
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
            vocab_size=c.vocab_size,
            n_positions=c.max_seq_len,
            n_embd=c.d_model,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            n_inner=c.d_ff,
            activation_function="gelu_new" if c.gelu_approximate else "gelu",
            layer_norm_epsilon=c.norm_eps,
            tie_word_embeddings=c.tie_embeddings,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
        )
    else:
        out.update(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.kv_heads,
            head_dim=c.dim_per_head,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta,
            tie_word_embeddings=c.tie_embeddings,
        )
        if family in ("gemma", _GEMMA3):
            out.update(
                hidden_act="gelu_pytorch_tanh",
                hidden_activation="gelu_pytorch_tanh",
                attention_bias=c.attn_bias,
            )
        else:
            out["hidden_act"] = "silu"
        if family == "llama":
            out.update(attention_bias=c.attn_bias, mlp_bias=c.mlp_bias, pretraining_tp=1)
            out["rope_scaling"] = _rope_scaling_to_hf(c)
        if family == _GEMMA3:
            out.update(_gemma3_to_hf(c))
        if family == "qwen2":
            out.update(use_sliding_window=False, max_window_layers=c.n_layers)
    out.update(initializer_range=c.init_std, use_cache=True, torch_dtype=dtype or c.param_dtype)
    for k, v in (token_ids or {}).items():
        if v is not None:
            out[k] = v
    return out
