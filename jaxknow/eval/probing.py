"""Linear probing of a frozen model's hidden states (bioS spec section 6).

* **P-probing** feeds a biography and reads, for each attribute, the hidden state at the last
  token before that attribute's sentence (optionally at every sentence boundary and at the
  last token, as a sweep); a linear classifier predicts the person's attribute value.
* **Q-probing** feeds only the person's full name and reads the hidden state at the name's last
  token; one linear classifier per attribute predicts all six attributes.

Every layer is probed (index 0 = embeddings, index l = residual stream after layer l): the
probes of all layers are trained together, as one batched einsum over a leading layer axis, in
one compiled `lax.scan`. Optionally a low-rank update of the input embedding
(``embed/lora_a|b``, rank 2 or 16 in the paper) is trained jointly with the probes by
backpropagating through the frozen model; each probed layer then gets its own adapter (shared by
that layer's attribute probes), looped over layers inside one compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig, init_lora, merge_lora
from jaxknow.model.transformer import forward
from jaxknow.parallel.rules import NO_SHARDING, Sharder
from jaxknow.worlds.bios import ATTRIBUTES, MONTHS, Biography, BiosWorld

__all__ = [
    "ProbeResult",
    "hidden_features",
    "p_probe",
    "p_probe_positions",
    "probe_labels",
    "q_probe",
    "q_probe_sequence",
    "resolve_layers",
    "train_linear_probe",
    "train_probe_with_embedding_update",
]

Layers = Literal["all"] | Sequence[int]
BirthDatePart = Literal["date", "year", "month", "day"]

END = "end"  # sweep position: the biography's last token
_NEG = -1e9  # logit of padded (absent) classes
_DATE_RE = re.compile(r"(\w+) (\d+), (\d+)")


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
        raise ValueError(f"a probed sequence has {n} tokens, more than model.max_seq_len="
                         f"{cfg.max_seq_len}")
    t = -(-n // 32) * 32
    return min(t, cfg.max_seq_len) if cfg.pos_embedding == "learned" else t


def _pad_tokens(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
    out = np.full((len(seqs), length), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "layers", "sharder"))
def _features(params: Any, tokens: jax.Array, pos: jax.Array, *, cfg: ModelConfig,
              layers: tuple[int, ...], sharder: Sharder) -> jax.Array:
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
            raise ValueError(f"example {i}: read position {pos[i].tolist()} outside its "
                             f"{len(s)} tokens")
    layer_idx = tuple(resolve_layers(layers, cfg.n_layers))
    if n == 0:
        out = np.zeros((len(layer_idx), 0, pos.shape[1], cfg.d_model), np.float32)
        return out[:, :, 0] if single else out
    length = _pad_length(max(len(s) for s in token_batches), cfg)
    chunks = []
    for lo in range(0, n, batch_size):
        seqs = list(token_batches[lo: lo + batch_size])
        p = pos[lo: lo + batch_size]
        real = len(seqs)
        if real < batch_size:  # a full-size last batch keeps one compiled shape
            seqs += [[pad_id]] * (batch_size - real)
            p = np.concatenate([p, np.zeros((batch_size - real, p.shape[1]), np.int32)])
        out = _features(params, jnp.asarray(_pad_tokens(seqs, length, pad_id)),
                        jnp.asarray(p), cfg=cfg, layers=layer_idx, sharder=sharder)
        chunks.append(np.asarray(out)[:, :real])
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
def _fit_linear(x_tr: jax.Array, y_tr: jax.Array, x_te: jax.Array, y_te: jax.Array,
                num_classes: jax.Array, lr: jax.Array, weight_decay: jax.Array, key: jax.Array,
                *, steps: int, batch_size: int | None, c_pad: int) -> jax.Array:
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
        raise ValueError(f"features must be [L, N, D] and labels [N]; got {features.shape} and "
                         f"{labels.shape}")
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("train_linear_probe needs at least one training and one test example")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    acc = _fit_linear(
        jnp.asarray(features[:, train_idx]), jnp.asarray(labels[train_idx]),
        jnp.asarray(features[:, test_idx]), jnp.asarray(labels[test_idx]),
        jnp.asarray(num_classes, jnp.int32), jnp.asarray(lr, jnp.float32),
        jnp.asarray(weight_decay, jnp.float32), jax.random.key(seed),
        steps=int(steps), batch_size=batch_size, c_pad=_bucket_classes(num_classes),
    )
    return np.asarray(acc, np.float64)


def _head_logits(tr: Any, base: Any, tokens: jax.Array, p: jax.Array,
                 consts: Mapping[str, jax.Array], cfg: ModelConfig, sharder: Sharder
                 ) -> jax.Array:
    """Returns masked probe logits [S, B, H, C]: for each probed layer, the model run with
    that layer's embedding adapter, its features read at p [B, K] (columns `cols`),
    standardised with (mu, sd), through that layer's probes."""

    def one(adapter: Any, w: jax.Array, b: jax.Array, layer: jax.Array, m: jax.Array,
            s: jax.Array) -> jax.Array:
        adapted = dict(base)
        adapted["embed"] = {**base["embed"], **adapter}
        hs = forward(adapted, tokens, cfg, sharder=sharder, collect_hidden=True).hiddens
        h = jnp.take(hs, layer, axis=0).astype(jnp.float32)  # [B, T, D]
        f = jnp.take_along_axis(h, p[:, :, None], axis=1)[:, consts["cols"]]  # [B, H, D]
        z = jnp.einsum("bhd,hdc->bhc", (f - m) / s, w) + b
        return _masked_logits(z, consts["ncls"])

    # lax.map, not vmap: the model compiles once whatever S, and one layer's activations
    # are live at a time
    return jax.lax.map(lambda a: one(*a), (tr["adapter"], tr["w"], tr["b"], consts["layers"],
                                          consts["mu"], consts["sd"]))


@functools.partial(jax.jit, static_argnames=("cfg", "sharder", "lr", "weight_decay"))
def _probe_step(tr: Any, opt: Any, base: Any, tokens: jax.Array, p: jax.Array, y: jax.Array,
                consts: Mapping[str, jax.Array], *, cfg: ModelConfig, sharder: Sharder,
                lr: float, weight_decay: float) -> tuple[Any, Any]:
    """One AdamW step of the adapters and probes `tr` on labels y [H, B]."""

    def loss(tr: Any) -> jax.Array:
        ce = optax.softmax_cross_entropy_with_integer_labels(
            _head_logits(tr, base, tokens, p, consts, cfg, sharder), y.T[None])
        return ce.mean(axis=1).sum()

    tx = optax.adamw(lr, weight_decay=weight_decay)
    updates, opt = tx.update(jax.grad(loss)(tr), opt, tr)
    return optax.apply_updates(tr, updates), opt


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _probe_predict(tr: Any, base: Any, tokens: jax.Array, p: jax.Array,
                   consts: Mapping[str, jax.Array], *, cfg: ModelConfig, sharder: Sharder
                   ) -> jax.Array:
    """Returns the predicted class [S, B, H] of every probe."""
    return jnp.argmax(_head_logits(tr, base, tokens, p, consts, cfg, sharder), -1)


def train_probe_with_embedding_update(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    sequences: Sequence[Sequence[int]],
    read_positions: np.ndarray,
    heads: Sequence[tuple[int, np.ndarray, int]],
    train_idx: np.ndarray | Sequence[int],
    test_idx: np.ndarray | Sequence[int],
    *,
    rank: int,
    layers: Layers = "all",
    steps: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int | None = None,
    weight_decay: float = 1e-4,
    eval_batch_size: int = 32,
    pad_id: int = 0,
    sharder: Sharder = NO_SHARDING,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Trains linear probes jointly with a rank-`rank` update of the input embedding, the model
    otherwise frozen; returns (test accuracy [S, H], the trained adapters
    {"lora_a": [S, V, r], "lora_b": [S, r, D]}) for the S probed layers and H heads.

    `read_positions` [N, K] are token indices into each sequence; head h = (column k, labels
    [N] in [0, num_classes), num_classes) reads column k. Each probed layer has its own
    adapter (scaled by `cfg.lora_scale`, as `embed` applies it), shared by its heads; gradients
    are taken only with respect to the adapters and the probes, so the model's parameters are
    never updated. Features are standardised with
    statistics of the unadapted model's training features. Adapters already present in
    `params` are merged first (see `merge_lora`).
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    if "lora_a" in params["embed"]:
        params = merge_lora(dict(params), cfg)
    layer_idx = resolve_layers(layers, cfg.n_layers)
    train_idx, test_idx = np.asarray(train_idx, np.int64), np.asarray(test_idx, np.int64)
    pos = np.asarray(read_positions, np.int32)
    cols = np.asarray([h[0] for h in heads], np.int32)
    labels = np.stack([np.asarray(h[1], np.int32) for h in heads])  # [H, N]
    ncls = np.asarray([h[2] for h in heads], np.int32)
    c_pad = _bucket_classes(int(ncls.max()))
    n_heads, d = len(heads), cfg.d_model
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("probing needs at least one training and one test example")

    feats = hidden_features(params, cfg, [sequences[i] for i in train_idx], pos[train_idx],
                            layers=layer_idx, batch_size=eval_batch_size, pad_id=pad_id,
                            sharder=sharder)[:, :, cols]  # [S, n, H, D]
    mu = jnp.asarray(feats.mean(axis=1))
    sd = jnp.asarray(feats.std(axis=1) + 1e-5)
    del feats

    s_count = len(layer_idx)
    key = jax.random.key(seed)
    adapters = [init_lora(cfg, LoraConfig(embedding_rank=rank), jax.random.fold_in(key, s))
                ["embed"] for s in range(s_count)]
    trainable = {
        "adapter": jax.tree.map(lambda *xs: jnp.stack(xs).astype(jnp.float32), *adapters),
        "w": jnp.zeros((s_count, n_heads, d, c_pad), jnp.float32),
        "b": jnp.zeros((s_count, n_heads, c_pad), jnp.float32),
    }
    consts = {"layers": jnp.asarray(layer_idx, jnp.int32), "mu": mu, "sd": sd,
              "cols": jnp.asarray(cols), "ncls": jnp.asarray(ncls)[:, None]}
    static = {"cfg": cfg, "sharder": sharder}

    length = _pad_length(max(len(s) for s in sequences), cfg)
    tokens = _pad_tokens(sequences, length, pad_id)
    opt_state = optax.adamw(lr, weight_decay=weight_decay).init(trainable)
    rng = np.random.default_rng(seed)
    n_tr = len(train_idx)
    bs = n_tr if batch_size is None else min(batch_size, n_tr)
    for _ in range(steps):
        rows = train_idx if bs == n_tr else train_idx[rng.choice(n_tr, bs, replace=False)]
        trainable, opt_state = _probe_step(
            trainable, opt_state, params, jnp.asarray(tokens[rows]), jnp.asarray(pos[rows]),
            jnp.asarray(labels[:, rows]), consts, lr=lr, weight_decay=weight_decay, **static)

    correct = np.zeros((s_count, n_heads))
    for lo in range(0, len(test_idx), eval_batch_size):
        rows = test_idx[lo: lo + eval_batch_size]
        real = len(rows)
        rows = np.concatenate([rows, np.repeat(rows[:1], eval_batch_size - real)])
        pred = np.asarray(_probe_predict(trainable, params, jnp.asarray(tokens[rows]),
                                         jnp.asarray(pos[rows]), consts, **static)
                          )[:, :real]  # [S, B, H]
        correct += (pred == labels[:, rows[:real]].T[None]).sum(axis=1)
    acc = correct / len(test_idx)
    return acc, {k: np.asarray(v) for k, v in trainable["adapter"].items()}


# --------------------------------------------------------------------------------------------
# bioS probes
# --------------------------------------------------------------------------------------------


def p_probe_positions(tokenizer: Tokenizer, biography: Biography) -> tuple[list[int],
                                                                           dict[str, int]]:
    """Returns (the biography's tokens: prefix + text tokens, {attribute: read index, "end":
    index of the last token}).

    The read index of an attribute is the last token that ends at or before its sentence's
    first character (character offsets from the tokenizer), i.e. the token just before the
    sentence; for a sentence at the very start of the text it is the prefix (bos) token.
    """
    enc = tokenizer.tok.encode(biography.text, add_special_tokens=False)
    prefix = tokenizer.prefix()
    tokens = prefix + list(enc.ids)
    ends = [end for _, end in enc.offsets]
    out: dict[str, int] = {}
    for span in biography.sentences:
        before = [j for j, e in enumerate(ends) if e <= span.start]
        if before:
            out[span.attribute] = len(prefix) + before[-1]
        elif prefix:
            out[span.attribute] = len(prefix) - 1
        else:
            raise ValueError(f"person {biography.person}: no token precedes the "
                             f"{span.attribute} sentence and the tokenizer has no bos token")
    out[END] = len(tokens) - 1
    return tokens, out


def q_probe_sequence(tokenizer: Tokenizer, full_name: str) -> list[int]:
    """Returns the Q-probing input: prefix + the tokens of the full name (read at its last)."""
    return tokenizer.prefix() + tokenizer.encode(full_name)


def probe_labels(world: BiosWorld, attribute: str, people: np.ndarray | Sequence[int],
                 birth_date: BirthDatePart = "date") -> np.ndarray:
    """Returns the raw label of each listed person for `attribute`: the index of their value in
    `world.attribute_values` (for birth_date, optionally only its year, month or day)."""
    people = np.asarray(people, np.int64)
    ids = np.asarray(world.attribute_ids[attribute])[people]
    if attribute != "birth_date" or birth_date == "date":
        return ids.astype(np.int64)
    if birth_date not in ("year", "month", "day"):
        raise ValueError(f"birth_date must be 'date', 'year', 'month' or 'day', got {birth_date!r}")
    values = world.attribute_values["birth_date"]
    out = np.empty(len(ids), np.int64)
    for i, v in enumerate(ids):
        m = _DATE_RE.fullmatch(values[int(v)])
        if m is None:
            raise ValueError(f"cannot parse birth date {values[int(v)]!r}")
        out[i] = {"year": int(m.group(3)), "month": MONTHS.index(m.group(1)),
                  "day": int(m.group(2))}[birth_date]
    return out


@dataclasses.dataclass
class ProbeResult:
    """Probe accuracies: `accuracy[layer][attribute]` (test accuracy of the probe reading
    hidden-state index `layer`), `chance[attribute]` (1 / number of classes present among the
    probed people), and for a P-probe sweep `sweep[position][layer][attribute]` (position: the
    attribute whose sentence follows the read token, or "end"). `num_train` / `num_test` count
    examples: biographies for a P-probe, people for a Q-probe."""

    kind: str  # "P" or "Q"
    layers: list[int]
    attributes: list[str]
    accuracy: dict[int, dict[str, float]]
    chance: dict[str, float]
    num_train: int
    num_test: int
    embedding_rank: int = 0
    sweep: dict[str, dict[int, dict[str, float]]] | None = None

    def series(self) -> dict[str, list[float]]:
        """Returns {attribute: accuracy per probed layer} (for `plots.plot_per_layer`)."""
        return {a: [self.accuracy[layer][a] for layer in self.layers] for a in self.attributes}

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict of the result."""
        d: dict[str, Any] = {
            "kind": self.kind, "layers": list(self.layers), "attributes": list(self.attributes),
            "accuracy": {str(k): dict(v) for k, v in self.accuracy.items()},
            "chance": dict(self.chance), "num_train": self.num_train,
            "num_test": self.num_test, "embedding_rank": self.embedding_rank,
        }
        if self.sweep is not None:
            d["sweep"] = {p: {str(k): dict(v) for k, v in by_layer.items()}
                          for p, by_layer in self.sweep.items()}
        return d

    def table(self) -> str:
        """Returns a markdown table: one row per layer, one column per attribute, plus chance;
        with a sweep, a second table (position x attribute) at the last probed layer."""
        head = ["layer", *self.attributes]
        rows = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * len(head))}|"]
        for layer in self.layers:
            cells = [f"{self.accuracy[layer][a]:.3f}" for a in self.attributes]
            rows.append(f"| {layer} | {' | '.join(cells)} |")
        rows.append(f"| chance | {' | '.join(f'{self.chance[a]:.3f}' for a in self.attributes)} |")
        if self.sweep is not None:
            last = self.layers[-1]
            rows += ["", f"Sweep at layer {last} (rows: read before the sentence of ...)", "",
                     f"| position | {' | '.join(self.attributes)} |",
                     f"|{'|'.join(['---'] * len(head))}|"]
            for p, by_layer in self.sweep.items():
                cells = [f"{by_layer[last][a]:.3f}" for a in self.attributes]
                rows.append(f"| {p} | {' | '.join(cells)} |")
        return "\n".join(rows)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Writes accuracy per layer (one line per attribute, chance dashed) as a PNG; returns
        the path."""
        from jaxknow.eval.plots import plot_per_layer

        return plot_per_layer(self.series(), path,
                              title or f"{self.kind}-probing accuracy per layer",
                              "test accuracy", x=self.layers, reference=self.chance)


def _compact(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Returns (labels renumbered 0..C-1 over the classes present, C)."""
    classes, inv = np.unique(raw, return_inverse=True)
    return inv.astype(np.int32), len(classes)


def _run_probes(
    params: Mapping[str, Any], cfg: ModelConfig, tokenizer: Tokenizer, kind: str,
    sequences: list[list[int]], positions: np.ndarray, pos_names: list[str],
    person_of: np.ndarray, world: BiosWorld, train_people: Any, test_people: Any,
    attributes: Sequence[str], probes: list[tuple[str, str]], *, layers: Layers, steps: int,
    lr: float, embedding_rank: int, seed: int, batch_size: int | None, weight_decay: float,
    feature_batch_size: int, birth_date: BirthDatePart, sharder: Sharder,
) -> dict[tuple[str, str], np.ndarray]:
    """Trains the (position, attribute) probes; returns {(position, attribute): acc [S]}."""
    train_set = set(int(p) for p in np.asarray(train_people).ravel())
    test_set = set(int(p) for p in np.asarray(test_people).ravel())
    if train_set & test_set:
        raise ValueError("train_people and test_people overlap")
    train_idx = np.asarray([i for i, p in enumerate(person_of) if p in train_set], np.int64)
    test_idx = np.asarray([i for i, p in enumerate(person_of) if p in test_set], np.int64)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"{kind}-probing needs examples of both training and test people")
    used = np.concatenate([train_idx, test_idx])
    labels: dict[str, tuple[np.ndarray, int]] = {}
    for a in attributes:
        raw = probe_labels(world, a, person_of[used], birth_date)
        compact, c = _compact(raw)
        full = np.zeros(len(person_of), np.int32)
        full[used] = compact
        labels[a] = (full, c)
    col = {p: i for i, p in enumerate(pos_names)}
    layer_idx = resolve_layers(layers, cfg.n_layers)
    if embedding_rank > 0:
        heads = [(col[p], labels[a][0], labels[a][1]) for p, a in probes]
        acc, _ = train_probe_with_embedding_update(
            params, cfg, sequences, positions, heads, train_idx, test_idx, rank=embedding_rank,
            layers=layer_idx, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
            weight_decay=weight_decay, eval_batch_size=feature_batch_size,
            pad_id=tokenizer.pad_id, sharder=sharder)
        return {pa: acc[:, h] for h, pa in enumerate(probes)}
    feats = hidden_features(params, cfg, sequences, positions, layers=layer_idx,
                            batch_size=feature_batch_size, pad_id=tokenizer.pad_id,
                            sharder=sharder)  # [S, N, K, D]
    return {(p, a): train_linear_probe(feats[:, :, col[p]], labels[a][0], train_idx, test_idx,
                                       labels[a][1], steps, lr, seed, batch_size=batch_size,
                                       weight_decay=weight_decay)
            for p, a in probes}


def _chance(world: BiosWorld, attributes: Sequence[str], people: np.ndarray,
            birth_date: BirthDatePart) -> dict[str, float]:
    return {a: 1.0 / len(np.unique(probe_labels(world, a, people, birth_date)))
            for a in attributes}


def p_probe(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    biographies: Sequence[Biography],
    train_people: np.ndarray | Sequence[int],
    test_people: np.ndarray | Sequence[int],
    *,
    layers: Layers = "all",
    steps: int = 500,
    lr: float = 1e-2,
    embedding_rank: int = 0,
    seed: int = 0,
    sweep: bool = False,
    attributes: Sequence[str] = ATTRIBUTES,
    batch_size: int | None = None,
    weight_decay: float = 1e-4,
    feature_batch_size: int = 32,
    birth_date: BirthDatePart = "date",
    sharder: Sharder = NO_SHARDING,
) -> ProbeResult:
    """Returns the P-probing result: for each attribute, a linear probe on the hidden state at
    the token just before that attribute's sentence predicts the person's value, per layer.

    One example per biography (all of a person's biographies when there are several); examples
    are split by person into `train_people` / `test_people`. With `sweep`, every sentence
    boundary (and the last token) is probed for every attribute, in `ProbeResult.sweep`.
    `embedding_rank` > 0 trains a low-rank update of the input embedding jointly with the
    probes (see `train_probe_with_embedding_update`).
    """
    pos_names = [*attributes, END] if sweep else list(attributes)
    sequences, positions, person_of = [], [], []
    keep = set(int(p) for p in np.asarray(train_people).ravel()) | set(
        int(p) for p in np.asarray(test_people).ravel())
    for bio in biographies:
        if bio.person not in keep:
            continue
        tokens, where = p_probe_positions(tokenizer, bio)
        sequences.append(tokens)
        positions.append([where[p] for p in pos_names])
        person_of.append(bio.person)
    person_arr = np.asarray(person_of, np.int64)
    probes = [(p, a) for p in pos_names for a in attributes] if sweep else \
        [(a, a) for a in attributes]
    acc = _run_probes(
        params, cfg, tokenizer, "P", sequences, np.asarray(positions, np.int32), pos_names,
        person_arr, world, train_people, test_people, attributes, probes, layers=layers,
        steps=steps, lr=lr, embedding_rank=embedding_rank, seed=seed, batch_size=batch_size,
        weight_decay=weight_decay, feature_batch_size=feature_batch_size,
        birth_date=birth_date, sharder=sharder)
    layer_idx = resolve_layers(layers, cfg.n_layers)
    accuracy = {layer: {a: float(acc[(a, a)][s]) for a in attributes}
                for s, layer in enumerate(layer_idx)}
    sweep_out = None
    if sweep:
        sweep_out = {p: {layer: {a: float(acc[(p, a)][s]) for a in attributes}
                         for s, layer in enumerate(layer_idx)} for p in pos_names}
    train_set = set(int(p) for p in np.asarray(train_people).ravel())
    return ProbeResult(
        kind="P", layers=layer_idx, attributes=list(attributes), accuracy=accuracy,
        chance=_chance(world, attributes, np.unique(person_arr), birth_date),
        num_train=int(sum(p in train_set for p in person_of)),
        num_test=int(sum(p not in train_set for p in person_of)),
        embedding_rank=embedding_rank, sweep=sweep_out)


def q_probe(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    train_people: np.ndarray | Sequence[int],
    test_people: np.ndarray | Sequence[int],
    *,
    layers: Layers = "all",
    steps: int = 500,
    lr: float = 1e-2,
    embedding_rank: int = 0,
    seed: int = 0,
    attributes: Sequence[str] = ATTRIBUTES,
    batch_size: int | None = None,
    weight_decay: float = 1e-4,
    feature_batch_size: int = 32,
    birth_date: BirthDatePart = "date",
    sharder: Sharder = NO_SHARDING,
) -> ProbeResult:
    """Returns the Q-probing result: the input is the person's full name alone (prefix +
    tokens of the name); linear probes on the hidden state at the name's last token predict
    every attribute, per layer. One example per listed person."""
    people = np.concatenate([np.asarray(train_people, np.int64).ravel(),
                             np.asarray(test_people, np.int64).ravel()])
    sequences = [q_probe_sequence(tokenizer, world.people[int(p)].full_name) for p in people]
    positions = np.asarray([[len(s) - 1] for s in sequences], np.int32)
    acc = _run_probes(
        params, cfg, tokenizer, "Q", sequences, positions, ["name"], people, world,
        train_people, test_people, attributes, [("name", a) for a in attributes],
        layers=layers, steps=steps, lr=lr, embedding_rank=embedding_rank, seed=seed,
        batch_size=batch_size, weight_decay=weight_decay,
        feature_batch_size=feature_batch_size, birth_date=birth_date, sharder=sharder)
    layer_idx = resolve_layers(layers, cfg.n_layers)
    accuracy = {layer: {a: float(acc[("name", a)][s]) for a in attributes}
                for s, layer in enumerate(layer_idx)}
    n_train = len(np.asarray(train_people).ravel())
    return ProbeResult(
        kind="Q", layers=layer_idx, attributes=list(attributes), accuracy=accuracy,
        chance=_chance(world, attributes, people, birth_date), num_train=n_train,
        num_test=len(people) - n_train, embedding_rank=embedding_rank)
