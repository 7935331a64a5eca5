"""Building blocks of the transformer as pure functions: norms, projections, rotary
embeddings, MLPs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxknow.model.config import ModelConfig


def norm(p: Mapping[str, jax.Array], x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Returns LayerNorm or RMSNorm of x (statistics in float32, output in x's dtype)."""
    xf = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
    else:
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + cfg.norm_eps)
    y = y * (p["scale"].astype(jnp.float32) + cfg.norm_scale_offset)
    if "bias" in p:
        y = y + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def lora_equations(eq: str) -> tuple[str, str]:
    """Returns the (down, up) einsum equations of a LoRA adapter on projection `eq`.

    For ``btd,dnh->btnh`` these are ``btd,dr->btr`` and ``btr,rnh->btnh``: ``lora_a`` has the
    kernel's input dims plus a rank dim, ``lora_b`` the rank dim plus the output dims.
    """
    lhs, out = eq.split("->")
    x_sub, w_sub = lhs.split(",")
    contracted = "".join(c for c in w_sub if c in x_sub)
    w_out = "".join(c for c in w_sub if c not in x_sub)
    batch = "".join(c for c in x_sub if c not in w_sub)
    return f"{x_sub},{contracted}r->{batch}r", f"{batch}r,r{w_out}->{out}"


def project(eq: str, x: jax.Array, w: jax.Array, **kwargs: Any) -> jax.Array:
    """Returns ``jnp.einsum(eq, x, w, **kwargs)`` computed with x's leading batch dims (those
    x and the output share and w lacks, e.g. ``bt`` of ``btd,df->btf``) merged into one.

    The same values up to fp32 round-off; the point is the backward pass. Differentiated with
    two batch dims, the weight's cotangent contracts over both, and XLA:CPU lays the activation
    cotangent out transposed for that dot, in a strided copy fused with the elementwise
    backward (SwiGLU's: ~30 ms a layer at SmolLM2's shape, 15 % of a full-finetuning step; lab
    notebook P10). One merged batch dim gives the plain ``td,tf->df`` dot, which reads the
    cotangent as it lies.
    """
    ins, out = eq.split("->")
    xs, ws = ins.split(",")
    n = 0
    while n < min(len(xs), len(out)) and xs[n] == out[n] and xs[n] not in ws:
        n += 1
    if n < 2:
        return jnp.einsum(eq, x, w, **kwargs)
    lead = x.shape[:n]
    flat_eq = f"{xs[n - 1 :]},{ws}->{out[n - 1 :]}"
    y = jnp.einsum(flat_eq, x.reshape((-1, *x.shape[n:])), w, **kwargs)
    return y.reshape(*lead, *y.shape[1:])


def dense(p: Mapping[str, jax.Array], x: jax.Array, eq: str, cfg: ModelConfig) -> jax.Array:
    """Returns the projection einsum(eq, x, kernel) (+ bias, + LoRA update when present).

    LoRA adapters live beside the kernel as ``lora_a`` and ``lora_b`` (see `lora_equations`);
    the update is scaled by `cfg.lora_scale`.
    """
    dt = cfg.compute_dtype
    y = project(eq, x, p["kernel"].astype(dt))
    if "bias" in p:
        y = y + p["bias"].astype(dt)
    if "lora_a" in p:
        down, up = lora_equations(eq)
        xa = project(down, x, p["lora_a"].astype(dt))
        y = y + cfg.lora_scale * project(up, xa, p["lora_b"].astype(dt))
    return y


def gelu(x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Returns GELU (tanh approximation when cfg.gelu_approximate)."""
    return jax.nn.gelu(x, approximate=cfg.gelu_approximate)


def mlp(p: Mapping[str, Any], x: jax.Array, cfg: ModelConfig, sharder: Any) -> jax.Array:
    """Returns the feed-forward block's output (GELU MLP, SwiGLU or GeGLU)."""
    up = dense(p["up"], x, "btd,df->btf", cfg)
    up = sharder.constrain(up, ("batch", "length", "act_mlp"))
    if cfg.mlp == "gelu":
        hidden = gelu(up, cfg)
    else:
        gate = dense(p["gate"], x, "btd,df->btf", cfg)
        gate = sharder.constrain(gate, ("batch", "length", "act_mlp"))
        act = jax.nn.silu(gate) if cfg.mlp == "swiglu" else jax.nn.gelu(gate, approximate=True)
        hidden = act * up
    return dense(p["down"], hidden, "btf,fd->btd", cfg)


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> jax.Array:
    """Returns the rotary inverse frequencies [head_dim/2] of the global layers (with Llama 3
    or linear scaling if set) or, with `local`, of the sliding-window layers (base
    `cfg.rope_local_theta` without scaling, when set; else the global frequencies)."""
    d = cfg.dim_per_head
    theta, sc = cfg.rope_theta, cfg.rope_scaling
    if local and cfg.rope_local_theta is not None:
        theta, sc = cfg.rope_local_theta, None
    inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if sc is None:
        return inv
    if set(sc) == {"factor"}:  # linear scaling: positions divided by the factor
        return inv / sc["factor"]
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old_len = sc["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Returns x [B, T, N, H] rotated by its positions [B, T] (rotate-half convention)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Returns cap * tanh(x / cap) (Gemma 2's logit soft-capping), or x when cap is None."""
    if cap is None:
        return x
    return cap * jnp.tanh(x / cap)
