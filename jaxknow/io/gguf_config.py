"""GGUF metadata -> a Hugging Face `config.json` dict, and GGUF tensor names -> Hugging Face
tensor names with the transforms llama.cpp's converter applied (undone here), so that a GGUF
file goes through the same tensor plan as a Hugging Face checkpoint.

Facts from llama.cpp's `convert_hf_to_gguf.py` (and transformers' GGUF loader, which undoes
them the same way): Llama's q and k projections are stored with their rows permuted per head
(the two rotary halves interleaved); Gemma's RMSNorm weights are stored as 1 + w.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxknow.io.gguf_file import GGUFError

#: GGUF architecture -> Hugging Face model_type / architectures entry.
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}

# Per-block GGUF tensor name -> Hugging Face name under model.layers.N (the projections are
# named alike in both families).
_PROJECTIONS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAMES = {
    "llama": {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        **_PROJECTIONS,
    },
    "gemma3": {
        "attn_norm": "input_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        **_PROJECTIONS,
    },
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_TOP = re.compile(r"^([a-z_]+)\.(weight|bias)$")


@dataclass(frozen=True)
class HFTensor:
    """How one Hugging Face tensor is read from a GGUF tensor: `gguf_name`, a row order
    (`rows[i]` is the GGUF row holding Hugging Face row i; None: the same order) and an offset
    added to every value (-1 for Gemma's stored 1 + w norms)."""

    gguf_name: str
    rows: np.ndarray | None = None
    add: float = 0.0


def supported_architecture(path: Any, arch: str) -> None:
    """Raises GGUFError naming the file when jaxknow cannot convert GGUF architecture `arch`."""
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"{path}: unsupported GGUF architecture {arch!r} (supported: "
            f"{', '.join(sorted(ARCHITECTURES))})"
        )


def hf_config_from_gguf(
    path: Any, meta: Mapping[str, Any], tensor_names: set[str], tensor_shapes: Mapping[str, Any]
) -> dict[str, Any]:
    """Returns the Hugging Face config dict a GGUF file's metadata describes (the keys
    transformers' GGUF loader reads; everything else stays at the family's defaults)."""
    arch = meta.get("general.architecture")
    supported_architecture(path, arch)
    model_type, hf_arch = ARCHITECTURES[arch]

    def get(key: str, default: Any = None, required: bool = True) -> Any:
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if required and default is None:
            raise GGUFError(f"{path}: metadata key {full!r} is missing")
        return default

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", required=False)
    if vocab is None and "token_embd.weight" in tensor_shapes:
        vocab = int(tensor_shapes["token_embd.weight"][0])
    if vocab is None and tokens:
        vocab = len(tokens)
    if vocab is None:
        raise GGUFError(f"{path}: cannot tell the vocabulary size")
    scaling = get("rope.scaling.type", "none", required=False)
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise GGUFError(
            f"{path}: rope scaling ({scaling!r}"
            f"{', rope_freqs.weight' if 'rope_freqs.weight' in tensor_names else ''}) is not "
            "supported"
        )
    hf: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": int(get("attention.head_count")),
        "num_key_value_heads": int(
            get("attention.head_count_kv", get("attention.head_count"), required=False)
        ),
        "max_position_embeddings": int(get("context_length", 8192, required=False)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6, required=False)),
        "rope_theta": float(get("rope.freq_base", 10_000.0, required=False)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    if arch == "llama":
        head_dim = get("rope.dimension_count", None, required=False)
        if head_dim is not None:
            hf["head_dim"] = int(head_dim)
        hf["hidden_act"] = "silu"
    if arch == "gemma3":
        key_length = get("attention.key_length", None, required=False)
        if key_length is not None:
            hf["head_dim"] = int(key_length)
        window = get("attention.sliding_window", None, required=False)
        if window is not None:
            hf["sliding_window"] = int(window)
    for key, name in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if meta.get(name) is not None:
            hf[key] = int(meta[name])
    return hf


def _permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Returns, for llama.cpp's interleaved q/k rows, the GGUF row of each Hugging Face row
    (llama.cpp stored row (h, 2j + s) from Hugging Face row (h, s * half + j))."""
    half = n_rows // n_head // 2
    # GGUF rows, viewed as [head, half, 2], hold Hugging Face rows [head, 2, half] transposed.
    gguf_of_hf = np.arange(n_rows).reshape(n_head, half, 2).swapaxes(1, 2).reshape(-1)
    return gguf_of_hf


def hf_tensor_map(
    path: Any, arch: str, hf: Mapping[str, Any], tensor_shapes: Mapping[str, Any]
) -> dict[str, HFTensor]:
    """Returns {Hugging Face tensor name: HFTensor} for every tensor of a GGUF file; raises
    GGUFError naming a tensor it does not know."""
    supported_architecture(path, arch)
    blocks = _BLOCK_NAMES[arch]
    out: dict[str, HFTensor] = {}
    for name, shape in tensor_shapes.items():
        m = _BLOCK.match(name)
        if m:
            i, part, kind = m.groups()
            if part not in blocks:
                raise GGUFError(f"{path}: unexpected tensor {name!r} for architecture {arch!r}")
            hf_name = f"model.layers.{i}.{blocks[part]}.{kind}"
        else:
            m = _TOP.match(name)
            if not m or m.group(1) not in _TOP_NAMES:
                raise GGUFError(f"{path}: unexpected tensor {name!r} for architecture {arch!r}")
            part, kind = m.groups()
            hf_name = f"{_TOP_NAMES[part]}.{kind}"
        rows = None
        if arch == "llama" and part in ("attn_q", "attn_k"):
            heads = hf["num_attention_heads"] if part == "attn_q" else hf["num_key_value_heads"]
            rows = _permutation(int(shape[0]), int(heads))
        add = -1.0 if arch == "gemma3" and part.endswith("norm") else 0.0
        out[hf_name] = HFTensor(name, rows, add)
    return out
