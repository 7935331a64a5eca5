"""Model FLOPs per token and accelerator peaks, for model-FLOPs utilisation (MFU)."""

from __future__ import annotations

import jax

from jaxknow.model.config import ModelConfig
from jaxknow.model.params import count_params, param_specs

# Dense bf16 peak FLOP/s per chip, by substrings of `device.device_kind`.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Returns 6·N + 12·L·d·T: training FLOPs per token with N all parameters (embeddings
    included, the convention of the PyTorch reference) plus attention scores and values."""
    n = count_params(param_specs(cfg))
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len


def prompt_flops_per_token(cfg: ModelConfig, seq_len: int, *, read_few: bool = False) -> float:
    """Returns the forward FLOPs per prompt token of the transformer layers: 2 × the layers'
    parameters (every projection) plus 2·L·N·H·T for causal attention's scores and values over
    T tokens (the half below the diagonal). No embedding lookup and no vocabulary projection:
    the arithmetic a forward pass over a prompt cannot skip (a lower bound of any evaluation's
    cost; `n_layers` of it per layer run). With `read_few` (only a few positions of each
    prompt are read: a scored or a prefilled prompt) the last layer counts its key and value
    projections alone, all it must run at every position (`transformer.forward`'s
    `read_at`)."""
    layers = count_params(param_specs(cfg)["layers"])
    full = 2.0 * layers + 2.0 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len
    if not read_few:
        return full
    per_layer = full / cfg.n_layers
    return full - per_layer + kv_flops_per_token(cfg)


def kv_flops_per_token(cfg: ModelConfig) -> float:
    """Returns one layer's key and value projections' FLOPs per token (biases included)."""
    attn = param_specs(cfg)["layers"]["attn"]
    return 2.0 * count_params({"k": attn["k"], "v": attn["v"]}) / cfg.n_layers


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Returns the dense bf16 peak FLOP/s of one device, or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in kind.lower():
            return peak
    return None
