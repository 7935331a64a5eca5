"""Model configuration: one decoder-only transformer covering the GPT-2, Llama, Qwen2, Gemma and
Gemma 3 families, plus named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax.numpy as jnp

from jaxknow.errors import check_choices

PosEmbedding = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu", "geglu"]
Remat = Literal["none", "full", "dots", "dots_no_batch"]
Dtype = Literal["float32", "bfloat16", "float16"]
AttentionImpl = Literal["xla", "cudnn"]

#: Depth from which `scan_layers=None` scans over the layers.
SCAN_LAYERS_FROM = 8

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ModelConfigError(ValueError):
    """A model configuration field has an invalid value; the message names the field."""


class FrozenDict(dict):
    """An immutable, hashable dict (equal to the plain dict with the same items), so that a
    ModelConfig holding one can be a static argument of `jax.jit`."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return FrozenDict, (dict(self),)

    def _immutable(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("FrozenDict is immutable")

    __setitem__ = __delitem__ = __ior__ = _immutable  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _immutable  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer.

    `dtype` is the compute dtype (activations, matmul inputs); `param_dtype` is the storage
    dtype of the parameters (the optimizer's master copy). Configs are hashable (`rope_scaling`
    is stored as a FrozenDict), so a config is a static argument of `jax.jit`.
    """

    vocab_size: int = 512
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (multi-head attention)
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int = 256
    max_seq_len: int = 128
    pos_embedding: PosEmbedding = "learned"
    rope_theta: float = 10_000.0
    # RoPE frequency scaling: Llama 3 style {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}, or linear {"factor"} alone (positions divided by
    # the factor, Gemma 3's global layers); None for plain RoPE.
    rope_scaling: Mapping[str, float] | None = None
    # RoPE base of the local (sliding-window) layers, which then rotate without rope_scaling
    # (Gemma 3: 10,000 while global layers use rope_theta = 1e6); None: local layers rotate
    # as the global ones. Needs sliding_window.
    rope_local_theta: float | None = None
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    # Gemma's RMSNorm multiplies by (1 + scale) instead of scale.
    norm_scale_offset: float = 0.0
    mlp: Mlp = "gelu"
    # GELU flavour: "tanh" (GPT-2's gelu_new, Gemma's gelu_pytorch_tanh) or "exact".
    gelu_approximate: bool = True
    tie_embeddings: bool = True
    attn_bias: bool = False  # biases on q/k/v projections (GPT-2, Qwen2)
    attn_out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm bias (GPT-2)
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Gemma)
    # Attention logits scale; None: 1/sqrt(head_dim). Gemma 2/3: query_pre_attn_scalar**-0.5.
    attn_scale: float | None = None
    # Gemma 3: RMSNorm over each head's query and key vectors after their projections, before
    # RoPE (with norm_scale_offset and norm_eps; parameters attn/q_norm, attn/k_norm [head_dim]).
    qk_norm: bool = False
    # Gemma 2/3's "sandwich" norms: the attention and MLP outputs are normalised before their
    # residual adds (parameters attn_post_norm, mlp_post_norm beside attn_norm, mlp_norm).
    post_norms: bool = False
    # Sliding-window (local) attention: a local layer's token attends to itself and the
    # sliding_window - 1 tokens before it. None: every layer attends globally.
    sliding_window: int | None = None
    # With sliding_window: layer i is global iff (i + 1) % sliding_window_pattern == 0
    # (Gemma 3: 6, i.e. every 6th layer; Gemma 2: 2); None: every layer is local.
    sliding_window_pattern: int | None = None
    # tanh soft-capping, cap * tanh(x / cap), of the attention logits (after scaling) and of
    # the output logits (Gemma 2); None: off.
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    init_std: float = 0.02
    dtype: Dtype = "float32"
    param_dtype: Dtype = "float32"
    remat: Remat = "none"
    # Run the layers as one `jax.lax.scan` over the stacked layer parameters (compile time
    # and program size independent of depth) instead of a loop over layer slices; None: on
    # from SCAN_LAYERS_FROM layers. The parameters are stacked either way (`model.layout`).
    scan_layers: bool | None = None
    # "xla", "cudnn" or None (automatic: cuDNN flash attention on a GPU in bf16/fp16, else XLA).
    attention_impl: AttentionImpl | None = None
    # Causal XLA attention in blocks of this many queries, each block reading only the keys up
    # to its last query (the masked upper triangle is never computed and a block's scores stay
    # in cache: a SmolLM2-135M layer's forward 1.13x / 1.33x / 1.78x at 512 / 1024 / 2048
    # tokens on a CPU, `benchmarks/bench_attention.py`); 0: one block; None: automatic (256
    # on a CPU, so sequences up to 256 tokens compute as one block; one block elsewhere).
    attention_query_block: int | None = None
    # Mask attention across document boundaries of packed sequences (segment ids).
    segment_masking: bool = True
    # Scale of LoRA adapter outputs (alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA);
    # only used when the parameters hold adapters (see jaxknow.model.lora).
    lora_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, FrozenDict):
            object.__setattr__(self, "rope_scaling", FrozenDict(self.rope_scaling))
        self.validate()

    # --- derived shapes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Returns the number of key/value heads."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dim_per_head(self) -> int:
        """Returns the per-head width."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def is_local_layer(self, i: int) -> bool:
        """Returns whether layer i attends within the sliding window (see `sliding_window`)."""
        if self.sliding_window is None:
            return False
        p = self.sliding_window_pattern
        return p is None or (i + 1) % p != 0

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Returns, per layer, whether it is a local (sliding-window) layer."""
        return tuple(self.is_local_layer(i) for i in range(self.n_layers))

    @property
    def use_scan(self) -> bool:
        """Returns whether `forward` scans over the layers (see `scan_layers`)."""
        if self.scan_layers is None:
            return self.n_layers >= SCAN_LAYERS_FROM
        return bool(self.scan_layers)

    @property
    def compute_dtype(self) -> Any:
        """Returns the jnp dtype of activations."""
        return _DTYPES[self.dtype]

    @property
    def storage_dtype(self) -> Any:
        """Returns the jnp dtype of parameters."""
        return _DTYPES[self.param_dtype]

    def replace(self, **kwargs: Any) -> ModelConfig:
        """Returns a copy with the given fields changed (validated)."""
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        if d["rope_scaling"] is not None:
            d["rope_scaling"] = dict(d["rope_scaling"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Returns a config from a dict; unknown keys raise ModelConfigError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"model: unknown field(s) {unknown}")
        return cls(**dict(d))

    def validate(self) -> None:
        """Raises ModelConfigError naming the first invalid field."""

        def bad(field: str, why: str) -> None:
            raise ModelConfigError(f"model.{field}={getattr(self, field)!r}: {why}")

        check_choices(self, "model", ModelConfigError)
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f, "must be a positive integer")
        if self.head_dim is None and self.d_model % self.n_heads:
            bad("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.head_dim is not None and self.head_dim <= 0:
            bad("head_dim", "must be positive")
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            bad("n_kv_heads", f"must be positive and divide n_heads={self.n_heads}")
        if self.pos_embedding == "rope" and self.dim_per_head % 2:
            bad("head_dim", "must be even for rotary embeddings")
        if self.scan_layers not in (None, True, False):
            bad("scan_layers", "must be None (automatic), True or False")
        if self.rope_scaling is not None and set(self.rope_scaling) != {"factor"}:
            need = {
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            }
            missing = need - set(self.rope_scaling)
            if missing:
                bad("rope_scaling", f"missing key(s) {sorted(missing)} (or {{'factor'}} alone)")
        if self.attention_query_block is not None and (
            not isinstance(self.attention_query_block, int)
            or isinstance(self.attention_query_block, bool)
            or self.attention_query_block < 0
        ):
            bad("attention_query_block", "must be None or an integer >= 0 (0: one block)")
        for f in ("sliding_window", "sliding_window_pattern"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                bad(f, "must be None or a positive integer")
        if self.sliding_window_pattern is not None and self.sliding_window is None:
            bad("sliding_window_pattern", "needs sliding_window")
        if self.rope_local_theta is not None:
            if self.sliding_window is None:
                bad("rope_local_theta", "needs sliding_window (there are no local layers)")
            if self.pos_embedding != "rope" or self.rope_local_theta <= 0:
                bad("rope_local_theta", "needs rotary embeddings and must be positive")
        for f in ("attn_logit_softcap", "final_logit_softcap"):
            v = getattr(self, f)
            if v is not None and not v > 0:
                bad(f, "must be None or positive")
        if self.qk_norm and self.norm != "rmsnorm":
            bad("qk_norm", "needs norm='rmsnorm'")


# --- presets ------------------------------------------------------------------------------
_GPT2 = dict(
    pos_embedding="learned",
    norm="layernorm",
    norm_bias=True,
    mlp="gelu",
    mlp_bias=True,
    attn_bias=True,
    attn_out_bias=True,
    tie_embeddings=True,
    gelu_approximate=True,
)
_LLAMA = dict(
    pos_embedding="rope",
    norm="rmsnorm",
    mlp="swiglu",
    tie_embeddings=False,
    norm_eps=1e-5,
    rope_theta=500_000.0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny shapes for tests and CPU smoke runs.
    "tiny": dict(
        _GPT2, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128
    ),
    "tiny-llama": dict(
        _LLAMA,
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=192,
        max_seq_len=128,
        rope_theta=10_000.0,
    ),
    # GPT-2 small (124M with the 50,257-token vocabulary).
    "gpt2-small": dict(
        _GPT2, vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024
    ),
    # The bioS paper's shape: GPT-2 small with rotary positions, context 512.
    "gpt2-small-rope": dict(
        _GPT2,
        pos_embedding="rope",
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_ff=3072,
        max_seq_len=512,
    ),
    # Llama-style models (Llama 3 family shapes).
    "llama-1b": dict(
        _LLAMA,
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        max_seq_len=2048,
        tie_embeddings=True,
        rope_scaling={
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "llama-8b": dict(
        _LLAMA,
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=8192,
    ),
    "llama-70b": dict(
        _LLAMA,
        vocab_size=128256,
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        d_ff=28672,
        max_seq_len=8192,
    ),
    # HuggingFaceTB/SmolLM2-135M (Llama blocks, tied embeddings).
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100_000.0,
        tie_embeddings=True,
        init_std=1 / 24,  # its initializer_range
    ),
    # google/gemma-3-270m: query/key norms, sandwich norms, 5 local (window 512) : 1 global.
    "gemma3-270m": dict(
        pos_embedding="rope",
        norm="rmsnorm",
        norm_scale_offset=1.0,
        norm_eps=1e-6,
        mlp="geglu",
        tie_embeddings=True,
        embed_scale=True,
        qk_norm=True,
        post_norms=True,
        vocab_size=262144,
        d_model=640,
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ff=2048,
        max_seq_len=32768,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        sliding_window=512,
        sliding_window_pattern=6,
        attn_scale=256**-0.5,
    ),
    "gemma-7b": dict(
        pos_embedding="rope",
        norm="rmsnorm",
        norm_scale_offset=1.0,
        norm_eps=1e-6,
        mlp="geglu",
        tie_embeddings=True,
        embed_scale=True,
        vocab_size=256000,
        d_model=3072,
        n_layers=28,
        n_heads=16,
        head_dim=256,
        d_ff=24576,
        max_seq_len=8192,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Returns the named preset's ModelConfig with `overrides` applied.

    Raises ModelConfigError listing the known presets when the name is unknown.
    """
    if name not in PRESETS:
        raise ModelConfigError(f"model.preset={name!r}: unknown preset; known: {sorted(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update(overrides)
    return ModelConfig(**fields)
