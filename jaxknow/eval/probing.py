"""Linear probing of a frozen model's hidden states, whatever the data (bioS spec section 6;
the bioS P-/Q-probes that use it are in `jaxknow.studies.bios.probing`).

Features are the hidden states at chosen token positions of every probed layer (index 0 =
embeddings, index l = residual stream after layer l). The probes of all layers are trained
together, as one batched einsum over a leading layer axis, in one compiled `lax.scan`.
Optionally a low-rank update of the input embedding (``embed/lora_a|b``, rank 2 or 16 in the
paper) is trained jointly with the probes by backpropagating through the frozen model; each
probed layer then gets its own adapter (shared by that layer's probes), looped over layers
inside one compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxknow.eval.generate import to_host
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig, init_lora, merge_lora
from jaxknow.model.transformer import forward
from jaxknow.parallel.rules import NO_SHARDING, Sharder

__all__ = [
    "ProbeHead",
    "ProbeSettings",
    "hidden_features",
    "probe_heads",
    "resolve_layers",
    "train_linear_probe",
    "train_probe_with_embedding_update",
]

Layers = Literal["all"] | Sequence[int]

_NEG = -1e9  # logit of padded (absent) classes


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """Which layers are probed and how the probes are trained.

    `batch_size` is the training minibatch (None: the full training set every step);
    `feature_batch_size` the sequences per forward pass when reading features (and when
    testing the embedding-update probes); `embedding_rank` > 0 trains a low-rank update of the
    input embedding jointly with the probes (`train_probe_with_embedding_update`).
    """

    layers: Layers = "all"
    steps: int = 500
    lr: float = 1e-2
    seed: int = 0
    batch_size: int | None = None
    weight_decay: float = 1e-4
    feature_batch_size: int = 32
    embedding_rank: int = 0


class ProbeHead(NamedTuple):
    """One probe: it reads column `column` of the read positions [N, K] and predicts
    `labels` [N] (class ids in [0, num_classes))."""

    column: int
    labels: np.ndarray
    num_classes: int


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------


def resolve_layers(layers: Layers, n_layers: int) -> list[int]:
    """Returns the hidden-state indices to probe, in 0..n_layers ("all" = every one; negative
    indices count from the end, -1 = after the last layer)."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all' or a list of indices, got {layers!r}")
        return list(range(n_layers + 1))
    out = []
    for i in layers:
        j = int(i) + (n_layers + 1 if int(i) < 0 else 0)
        if not 0 <= j <= n_layers:
            raise ValueError(f"layer {i} out of range for a {n_layers}-layer model (0..{n_layers})")
        out.append(j)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"layers must be non-empty and distinct, got {list(layers)}")
    return out


def _pad_length(n: int, cfg: ModelConfig) -> int:
    """Rounds a sequence length up to a multiple of 32 (fewer compiles), within max_seq_len for
    learned positions."""
    if cfg.pos_embedding == "learned" and n > cfg.max_seq_len:
        raise ValueError(
            f"a probed sequence has {n} tokens, more than model.max_seq_len={cfg.max_seq_len}"
        )
    t = -(-n // 32) * 32
    return min(t, cfg.max_seq_len) if cfg.pos_embedding == "learned" else t


def _pad_tokens(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
    out = np.full((len(seqs), length), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "layers", "sharder"))
def _features(
    params: Any,
    tokens: jax.Array,
    pos: jax.Array,
    *,
    cfg: ModelConfig,
    layers: tuple[int, ...],
    sharder: Sharder,
) -> jax.Array:
    """Returns float32 hidden states [S, B, K, D] of `layers` at positions pos [B, K]."""
    h = forward(params, tokens, cfg, sharder=sharder, collect_hidden=True).hiddens
    h = h[np.asarray(layers)]
    # right padding never reaches the read positions under causal attention
    g = jnp.take_along_axis(h, pos[None, :, :, None], axis=2)  # [S, B, K, D]
    return g.astype(jnp.float32)


def hidden_features(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    token_batches: Sequence[Sequence[int]],
    positions_to_read: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
    *,
    layers: Layers = "all",
    batch_size: int = 32,
    pad_id: int = 0,
    sharder: Sharder = NO_SHARDING,
) -> np.ndarray:
    """Returns the hidden states at the requested token indices, float32 numpy
    [S, N, D] for positions [N] (or [S, N, K, D] for positions [N, K]), with S = the probed
    layers (all L+1 by default: index 0 = embeddings, l = after layer l).

    `token_batches` holds one token-id sequence per example (any number: they are split into
    fixed-size batches, right-padded with `pad_id`); `positions_to_read[i]` indexes example i's
    tokens. The model runs once per batch, jitted, with `collect_hidden=True`.
    """
    pos = np.asarray(positions_to_read, np.int32)
    single = pos.ndim == 1
    if single:
        pos = pos[:, None]
    n = len(token_batches)
    if pos.shape[0] != n:
        raise ValueError(f"{n} sequences but {pos.shape[0]} rows of positions")
    for i, s in enumerate(token_batches):
        if pos[i].min() < 0 or pos[i].max() >= len(s):
            raise ValueError(
                f"example {i}: read position {pos[i].tolist()} outside its {len(s)} tokens"
            )
    layer_idx = tuple(resolve_layers(layers, cfg.n_layers))
    if n == 0:
        out = np.zeros((len(layer_idx), 0, pos.shape[1], cfg.d_model), np.float32)
        return out[:, :, 0] if single else out
    length = _pad_length(max(len(s) for s in token_batches), cfg)
    chunks = []
    for lo in range(0, n, batch_size):
        seqs = list(token_batches[lo : lo + batch_size])
        p = pos[lo : lo + batch_size]
        real = len(seqs)
        if real < batch_size:  # a full-size last batch keeps one compiled shape
            seqs += [[pad_id]] * (batch_size - real)
            p = np.concatenate([p, np.zeros((batch_size - real, p.shape[1]), np.int32)])
        out = _features(
            params,
            jnp.asarray(_pad_tokens(seqs, length, pad_id)),
            jnp.asarray(p),
            cfg=cfg,
            layers=layer_idx,
            sharder=sharder,
        )
        chunks.append(to_host(out)[:, :real])
    feats = np.concatenate(chunks, axis=1)
    return feats[:, :, 0] if single else feats


# --------------------------------------------------------------------------------------------
# Linear probes
# --------------------------------------------------------------------------------------------


def _bucket_classes(c: int) -> int:
    """Rounds a class count up to a power of two (>= 2), so attributes share a compile."""
    return max(2, 1 << (int(c) - 1).bit_length())


def _masked_logits(logits: jax.Array, num_classes: jax.Array) -> jax.Array:
    valid = jnp.arange(logits.shape[-1]) < num_classes
    return jnp.where(valid, logits, _NEG)


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "c_pad"))
def _fit_linear(
    x_tr: jax.Array,
    y_tr: jax.Array,
    x_te: jax.Array,
    y_te: jax.Array,
    num_classes: jax.Array,
    lr: jax.Array,
    weight_decay: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    batch_size: int | None,
    c_pad: int,
) -> jax.Array:
    """Trains one softmax-regression probe per leading index g of x [G, n, D] (labels [n]) and
    returns the test accuracy per g."""
    g, n, d = x_tr.shape
    mu = x_tr.mean(axis=1, keepdims=True)
    sd = x_tr.std(axis=1, keepdims=True) + 1e-5
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd  # per-layer scales differ wildly
    probe = {"w": jnp.zeros((g, d, c_pad), jnp.float32), "b": jnp.zeros((g, c_pad), jnp.float32)}
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def logits(p: Any, x: jax.Array) -> jax.Array:
        z = jnp.einsum("gnd,gdc->gnc", x, p["w"]) + p["b"][:, None]
        return _masked_logits(z, num_classes)

    def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y[None])
        return ce.mean(axis=1).sum()  # sum over layers: each probe gets its own gradient

    def step(carry: Any, k: jax.Array) -> tuple[Any, None]:
        p, s = carry
        if batch_size is None or batch_size >= n:
            x, y = x_tr, y_tr
        else:
            idx = jax.random.choice(k, n, (batch_size,), replace=False)
            x, y = x_tr[:, idx], y_tr[idx]
        grads = jax.grad(loss)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (probe, _), _ = jax.lax.scan(step, (probe, tx.init(probe)), jax.random.split(key, steps))
    pred = jnp.argmax(logits(probe, x_te), axis=-1)
    return (pred == y_te[None]).mean(axis=1)


def train_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray | Sequence[int],
    test_idx: np.ndarray | Sequence[int],
    num_classes: int,
    steps: int,
    lr: float,
    seed: int,
    *,
    batch_size: int | None = None,
    weight_decay: float = 1e-4,
) -> np.ndarray:
    """Returns the test accuracy [L] of one linear probe per layer trained on features [L, N, D].

    Each layer's probe is a softmax regression on standardised features (mean/std of the
    training rows), trained with AdamW for `steps` steps on the full training set
    (`batch_size=None`) or on seeded random minibatches; `labels` [N] are class ids in
    [0, num_classes). All layers train at once (one batched einsum, one compile).
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    train_idx, test_idx = np.asarray(train_idx, np.int64), np.asarray(test_idx, np.int64)
    if features.ndim != 3 or labels.shape != features.shape[1:2]:
        raise ValueError(
            f"features must be [L, N, D] and labels [N]; got {features.shape} and {labels.shape}"
        )
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("train_linear_probe needs at least one training and one test example")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    acc = _fit_linear(
        jnp.asarray(features[:, train_idx]),
        jnp.asarray(labels[train_idx]),
        jnp.asarray(features[:, test_idx]),
        jnp.asarray(labels[test_idx]),
        jnp.asarray(num_classes, jnp.int32),
        jnp.asarray(lr, jnp.float32),
        jnp.asarray(weight_decay, jnp.float32),
        jax.random.key(seed),
        steps=int(steps),
        batch_size=batch_size,
        c_pad=_bucket_classes(num_classes),
    )
    return np.asarray(acc, np.float64)


def _head_logits(
    tr: Any,
    base: Any,
    tokens: jax.Array,
    p: jax.Array,
    consts: Mapping[str, jax.Array],
    cfg: ModelConfig,
    sharder: Sharder,
) -> jax.Array:
    """Returns masked probe logits [S, B, H, C]: for each probed layer, the model run with
    that layer's embedding adapter, its features read at p [B, K] (columns `cols`),
    standardised with (mu, sd), through that layer's probes."""

    def one(
        adapter: Any, w: jax.Array, b: jax.Array, layer: jax.Array, m: jax.Array, s: jax.Array
    ) -> jax.Array:
        adapted = dict(base)
        adapted["embed"] = {**base["embed"], **adapter}
        hs = forward(adapted, tokens, cfg, sharder=sharder, collect_hidden=True).hiddens
        h = jnp.take(hs, layer, axis=0).astype(jnp.float32)  # [B, T, D]
        f = jnp.take_along_axis(h, p[:, :, None], axis=1)[:, consts["cols"]]  # [B, H, D]
        z = jnp.einsum("bhd,hdc->bhc", (f - m) / s, w) + b
        return _masked_logits(z, consts["ncls"])

    # lax.map, not vmap: the model compiles once whatever S, and one layer's activations
    # are live at a time
    return jax.lax.map(
        lambda a: one(*a),
        (tr["adapter"], tr["w"], tr["b"], consts["layers"], consts["mu"], consts["sd"]),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "sharder", "lr", "weight_decay"))
def _probe_step(
    tr: Any,
    opt: Any,
    base: Any,
    tokens: jax.Array,
    p: jax.Array,
    y: jax.Array,
    consts: Mapping[str, jax.Array],
    *,
    cfg: ModelConfig,
    sharder: Sharder,
    lr: float,
    weight_decay: float,
) -> tuple[Any, Any]:
    """One AdamW step of the adapters and probes `tr` on labels y [H, B]."""

    def loss(tr: Any) -> jax.Array:
        ce = optax.softmax_cross_entropy_with_integer_labels(
            _head_logits(tr, base, tokens, p, consts, cfg, sharder), y.T[None]
        )
        return ce.mean(axis=1).sum()

    tx = optax.adamw(lr, weight_decay=weight_decay)
    updates, opt = tx.update(jax.grad(loss)(tr), opt, tr)
    return optax.apply_updates(tr, updates), opt


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _probe_predict(
    tr: Any,
    base: Any,
    tokens: jax.Array,
    p: jax.Array,
    consts: Mapping[str, jax.Array],
    *,
    cfg: ModelConfig,
    sharder: Sharder,
) -> jax.Array:
    """Returns the predicted class [S, B, H] of every probe."""
    return jnp.argmax(_head_logits(tr, base, tokens, p, consts, cfg, sharder), -1)


def _stack_heads(heads: Sequence[ProbeHead]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (columns [H], labels [H, N], class counts [H]) of the heads."""
    cols = np.asarray([column for column, _, _ in heads], np.int32)
    labels = np.stack([np.asarray(y, np.int32) for _, y, _ in heads])
    ncls = np.asarray([c for _, _, c in heads], np.int32)
    return cols, labels, ncls


def _init_probes(
    cfg: ModelConfig, rank: int, n_layers: int, n_heads: int, c_pad: int, seed: int
) -> dict[str, Any]:
    """Returns the trainable tree: one embedding adapter per probed layer (seeded by its
    index) and zero-initialised probes w [S, H, D, C], b [S, H, C]."""
    key = jax.random.key(seed)
    adapters = [
        init_lora(cfg, LoraConfig(embedding_rank=rank), jax.random.fold_in(key, s))["embed"]
        for s in range(n_layers)
    ]
    return {
        "adapter": jax.tree.map(lambda *xs: jnp.stack(xs).astype(jnp.float32), *adapters),
        "w": jnp.zeros((n_layers, n_heads, cfg.d_model, c_pad), jnp.float32),
        "b": jnp.zeros((n_layers, n_heads, c_pad), jnp.float32),
    }


@dataclasses.dataclass(frozen=True)
class _AdapterProblem:
    """The fixed inputs of an embedding-update probe: the frozen model, every example's
    padded tokens [N, T], read positions [N, K] and labels [H, N], and the constants of
    `_head_logits`."""

    params: Any
    cfg: ModelConfig
    sharder: Sharder
    tokens: np.ndarray
    pos: np.ndarray
    labels: np.ndarray
    consts: Mapping[str, jax.Array]

    def fit(self, trainable: Any, train_idx: np.ndarray, settings: ProbeSettings) -> Any:
        """Returns `trainable` after `settings.steps` AdamW steps on the training rows (full
        batch, or seeded minibatches without replacement)."""
        lr, wd = settings.lr, settings.weight_decay
        opt_state = optax.adamw(lr, weight_decay=wd).init(trainable)
        rng = np.random.default_rng(settings.seed)
        n_tr = len(train_idx)
        bs = n_tr if settings.batch_size is None else min(settings.batch_size, n_tr)
        for _ in range(settings.steps):
            rows = train_idx if bs == n_tr else train_idx[rng.choice(n_tr, bs, replace=False)]
            trainable, opt_state = _probe_step(
                trainable,
                opt_state,
                self.params,
                jnp.asarray(self.tokens[rows]),
                jnp.asarray(self.pos[rows]),
                jnp.asarray(self.labels[:, rows]),
                self.consts,
                cfg=self.cfg,
                sharder=self.sharder,
                lr=lr,
                weight_decay=wd,
            )
        return trainable

    def accuracy(self, trainable: Any, test_idx: np.ndarray, batch_size: int) -> np.ndarray:
        """Returns the test accuracy [S, H] of every probe, in fixed-size batches (the last
        one padded with copies of its first row, which are not counted)."""
        n_layers, n_heads = trainable["b"].shape[:2]
        correct = np.zeros((n_layers, n_heads))
        for lo in range(0, len(test_idx), batch_size):
            rows = test_idx[lo : lo + batch_size]
            real = len(rows)
            rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - real)])
            pred = to_host(
                _probe_predict(
                    trainable,
                    self.params,
                    jnp.asarray(self.tokens[rows]),
                    jnp.asarray(self.pos[rows]),
                    self.consts,
                    cfg=self.cfg,
                    sharder=self.sharder,
                )
            )[:, :real]  # [S, B, H]
            correct += (pred == self.labels[:, rows[:real]].T[None]).sum(axis=1)
        return correct / len(test_idx)


def train_probe_with_embedding_update(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    sequences: Sequence[Sequence[int]],
    read_positions: np.ndarray,
    heads: Sequence[ProbeHead],
    train_idx: np.ndarray | Sequence[int],
    test_idx: np.ndarray | Sequence[int],
    settings: ProbeSettings,
    *,
    pad_id: int = 0,
    sharder: Sharder = NO_SHARDING,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Trains linear probes jointly with a rank-`settings.embedding_rank` update of the input
    embedding, the model otherwise frozen; returns (test accuracy [S, H], the trained adapters
    {"lora_a": [S, V, r], "lora_b": [S, r, D]}) for the S probed layers and H heads.

    `read_positions` [N, K] are token indices into each sequence; each head reads one column
    of them. Each probed layer has its own adapter (scaled by `cfg.lora_scale`, as `embed`
    applies it), shared by its heads; gradients are taken only with respect to the adapters
    and the probes, so the model's parameters are never updated. Features are standardised
    with statistics of the unadapted model's training features. Adapters already present in
    `params` are merged first (see `merge_lora`). Tests run in batches of
    `settings.feature_batch_size`.
    """
    rank = settings.embedding_rank
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if "lora_a" in params["embed"]:
        params = merge_lora(dict(params), cfg)
    layer_idx = resolve_layers(settings.layers, cfg.n_layers)
    train_idx, test_idx = np.asarray(train_idx, np.int64), np.asarray(test_idx, np.int64)
    pos = np.asarray(read_positions, np.int32)
    cols, labels, ncls = _stack_heads(heads)
    c_pad = _bucket_classes(int(ncls.max()))
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("probing needs at least one training and one test example")

    feats = hidden_features(
        params,
        cfg,
        [sequences[i] for i in train_idx],
        pos[train_idx],
        layers=layer_idx,
        batch_size=settings.feature_batch_size,
        pad_id=pad_id,
        sharder=sharder,
    )[:, :, cols]  # [S, n, H, D]
    consts = {
        "layers": jnp.asarray(layer_idx, jnp.int32),
        "mu": jnp.asarray(feats.mean(axis=1)),
        "sd": jnp.asarray(feats.std(axis=1) + 1e-5),
        "cols": jnp.asarray(cols),
        "ncls": jnp.asarray(ncls)[:, None],
    }
    del feats

    trainable = _init_probes(cfg, rank, len(layer_idx), len(heads), c_pad, settings.seed)
    length = _pad_length(max(len(s) for s in sequences), cfg)
    problem = _AdapterProblem(
        params, cfg, sharder, _pad_tokens(sequences, length, pad_id), pos, labels, consts
    )
    trainable = problem.fit(trainable, train_idx, settings)
    acc = problem.accuracy(trainable, test_idx, settings.feature_batch_size)
    return acc, {k: to_host(v) for k, v in trainable["adapter"].items()}


def probe_heads(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    sequences: Sequence[Sequence[int]],
    read_positions: np.ndarray,
    heads: Sequence[ProbeHead],
    train_idx: np.ndarray | Sequence[int],
    test_idx: np.ndarray | Sequence[int],
    settings: ProbeSettings,
    *,
    pad_id: int = 0,
    sharder: Sharder = NO_SHARDING,
) -> np.ndarray:
    """Returns the test accuracy [S, H] of one probe per probed layer and head: linear probes
    on the frozen model's features (`train_linear_probe`), or, with
    `settings.embedding_rank` > 0, probes trained jointly with an embedding update
    (`train_probe_with_embedding_update`). Arguments as for the latter."""
    if settings.embedding_rank > 0:
        acc, _ = train_probe_with_embedding_update(
            params,
            cfg,
            sequences,
            read_positions,
            heads,
            train_idx,
            test_idx,
            settings,
            pad_id=pad_id,
            sharder=sharder,
        )
        return acc
    layer_idx = resolve_layers(settings.layers, cfg.n_layers)
    feats = hidden_features(
        params,
        cfg,
        sequences,
        read_positions,
        layers=layer_idx,
        batch_size=settings.feature_batch_size,
        pad_id=pad_id,
        sharder=sharder,
    )  # [S, N, K, D]
    return np.stack(
        [
            train_linear_probe(
                feats[:, :, column],
                labels,
                train_idx,
                test_idx,
                num_classes,
                settings.steps,
                settings.lr,
                settings.seed,
                batch_size=settings.batch_size,
                weight_decay=settings.weight_decay,
            )
            for column, labels, num_classes in heads
        ],
        axis=1,
    )
