"""The bioS probes (bioS spec section 6), on the generic probing of `jaxknow.eval.probing`.

* **P-probing** feeds a biography and reads, for each attribute, the hidden state at the last
  token before that attribute's sentence (optionally at every sentence boundary and at the
  last token, as a sweep); a linear classifier predicts the person's attribute value.
* **Q-probing** feeds only the person's full name and reads the hidden state at the name's last
  token; one linear classifier per attribute predicts all six attributes.

This module decides which people, attributes and positions are probed and turns attribute
values into labels; `jaxknow.eval.probing` reads the features and trains the probes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval.probing import (
    ProbeHead,
    ProbeSettings,
    hidden_features,
    probe_heads,
    resolve_layers,
    train_linear_probe,
)
from jaxknow.eval.tables import markdown_table
from jaxknow.model.config import ModelConfig
from jaxknow.parallel.rules import NO_SHARDING, Sharder
from jaxknow.studies.bios.world import ATTRIBUTES, MONTHS, Biography, BiosWorld

__all__ = [
    "END",
    "ProbeResult",
    "p_probe",
    "p_probe_positions",
    "probe_labels",
    "probe_size_curve",
    "q_probe",
    "q_probe_sequence",
]

BirthDatePart = Literal["date", "year", "month", "day"]

END = "end"  # sweep position: the biography's last token
_DATE_RE = re.compile(r"(\w+) (\d+), (\d+)")
_DEFAULTS = ProbeSettings()


def p_probe_positions(
    tokenizer: Tokenizer, biography: Biography
) -> tuple[list[int], dict[str, int]]:
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
            raise ValueError(
                f"person {biography.person}: no token precedes the "
                f"{span.attribute} sentence and the tokenizer has no bos token"
            )
    out[END] = len(tokens) - 1
    return tokens, out


def q_probe_sequence(tokenizer: Tokenizer, full_name: str) -> list[int]:
    """Returns the Q-probing input: prefix + the tokens of the full name (read at its last)."""
    return tokenizer.prefix() + tokenizer.encode(full_name)


def probe_labels(
    world: BiosWorld,
    attribute: str,
    people: np.ndarray | Sequence[int],
    birth_date: BirthDatePart = "date",
) -> np.ndarray:
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
        out[i] = {
            "year": int(m.group(3)),
            "month": MONTHS.index(m.group(1)),
            "day": int(m.group(2)),
        }[birth_date]
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
            "kind": self.kind,
            "layers": list(self.layers),
            "attributes": list(self.attributes),
            "accuracy": {str(k): dict(v) for k, v in self.accuracy.items()},
            "chance": dict(self.chance),
            "num_train": self.num_train,
            "num_test": self.num_test,
            "embedding_rank": self.embedding_rank,
        }
        if self.sweep is not None:
            d["sweep"] = {
                p: {str(k): dict(v) for k, v in by_layer.items()}
                for p, by_layer in self.sweep.items()
            }
        return d

    def table(self) -> str:
        """Returns a markdown table: one row per layer, one column per attribute, plus chance;
        with a sweep, a second table (position x attribute) at the last probed layer."""

        def row(name: Any, acc: Mapping[str, float]) -> list[str]:
            return [str(name), *(f"{acc[a]:.3f}" for a in self.attributes)]

        rows = [row(layer, self.accuracy[layer]) for layer in self.layers]
        parts = [
            markdown_table(
                ["layer", *self.attributes], [*rows, row("chance", self.chance)], cell=str
            )
        ]
        if self.sweep is not None:
            last = self.layers[-1]
            parts += [
                "",
                f"Sweep at layer {last} (rows: read before the sentence of ...)",
                "",
                markdown_table(
                    ["position", *self.attributes],
                    [row(p, by_layer[last]) for p, by_layer in self.sweep.items()],
                    cell=str,
                ),
            ]
        return "\n".join(parts)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Writes accuracy per layer (one line per attribute, chance dashed) as a PNG; returns
        the path."""
        from jaxknow.eval.plots import plot_per_layer

        return plot_per_layer(
            self.series(),
            path,
            title or f"{self.kind}-probing accuracy per layer",
            "test accuracy",
            x=self.layers,
            reference=self.chance,
        )


def _compact(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Returns (labels renumbered 0..C-1 over the classes present, C)."""
    classes, inv = np.unique(raw, return_inverse=True)
    return inv.astype(np.int32), len(classes)


def _people(people: np.ndarray | Sequence[int]) -> set[int]:
    return set(int(p) for p in np.asarray(people).ravel())


@dataclasses.dataclass(frozen=True)
class _Examples:
    """The probed inputs: one token sequence per example, its read positions [N, K] (column k
    named `columns[k]`) and the person it is about."""

    kind: str  # "P" or "Q"
    sequences: list[list[int]]
    positions: np.ndarray
    columns: list[str]
    person_of: np.ndarray

    def split(self, train_people: Any, test_people: Any) -> tuple[np.ndarray, np.ndarray]:
        """Returns the example indices of the training and of the test people."""
        train_set, test_set = _people(train_people), _people(test_people)
        if train_set & test_set:
            raise ValueError("train_people and test_people overlap")
        train_idx = np.asarray(
            [i for i, p in enumerate(self.person_of) if p in train_set], np.int64
        )
        test_idx = np.asarray([i for i, p in enumerate(self.person_of) if p in test_set], np.int64)
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise ValueError(f"{self.kind}-probing needs examples of both training and test people")
        return train_idx, test_idx

    def heads(
        self,
        world: BiosWorld,
        used: np.ndarray,
        attributes: Sequence[str],
        probes: Sequence[tuple[str, str]],
        birth_date: BirthDatePart,
    ) -> list[ProbeHead]:
        """Returns one head per (position, attribute) probe; labels are renumbered over the
        classes present among the `used` examples (0 elsewhere)."""
        labels: dict[str, tuple[np.ndarray, int]] = {}
        for a in attributes:
            compact, c = _compact(probe_labels(world, a, self.person_of[used], birth_date))
            full = np.zeros(len(self.person_of), np.int32)
            full[used] = compact
            labels[a] = (full, c)
        col = {p: i for i, p in enumerate(self.columns)}
        return [ProbeHead(col[p], *labels[a]) for p, a in probes]


def _probe_accuracy(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    examples: _Examples,
    train_people: Any,
    test_people: Any,
    probes: list[tuple[str, str]],
    settings: ProbeSettings,
    *,
    attributes: Sequence[str],
    birth_date: BirthDatePart,
    sharder: Sharder,
) -> dict[tuple[str, str], np.ndarray]:
    """Trains the (position, attribute) probes; returns {(position, attribute): acc [S]}."""
    train_idx, test_idx = examples.split(train_people, test_people)
    heads = examples.heads(
        world, np.concatenate([train_idx, test_idx]), attributes, probes, birth_date
    )
    acc = probe_heads(
        params,
        cfg,
        examples.sequences,
        examples.positions,
        heads,
        train_idx,
        test_idx,
        settings,
        pad_id=tokenizer.pad_id,
        sharder=sharder,
    )
    return {pa: acc[:, h] for h, pa in enumerate(probes)}


def _chance(
    world: BiosWorld, attributes: Sequence[str], people: np.ndarray, birth_date: BirthDatePart
) -> dict[str, float]:
    return {a: 1.0 / len(np.unique(probe_labels(world, a, people, birth_date))) for a in attributes}


def p_probe(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    biographies: Sequence[Biography],
    train_people: np.ndarray | Sequence[int],
    test_people: np.ndarray | Sequence[int],
    settings: ProbeSettings = _DEFAULTS,
    *,
    sweep: bool = False,
    attributes: Sequence[str] = ATTRIBUTES,
    birth_date: BirthDatePart = "date",
    sharder: Sharder = NO_SHARDING,
) -> ProbeResult:
    """Returns the P-probing result: for each attribute, a linear probe on the hidden state at
    the token just before that attribute's sentence predicts the person's value, per layer.

    One example per biography (all of a person's biographies when there are several); examples
    are split by person into `train_people` / `test_people`. With `sweep`, every sentence
    boundary (and the last token) is probed for every attribute, in `ProbeResult.sweep`.
    `settings.embedding_rank` > 0 trains a low-rank update of the input embedding jointly with
    the probes (see `jaxknow.eval.probing.train_probe_with_embedding_update`).
    """
    pos_names = [*attributes, END] if sweep else list(attributes)
    sequences, positions, person_of = [], [], []
    keep = _people(train_people) | _people(test_people)
    for bio in biographies:
        if bio.person not in keep:
            continue
        tokens, where = p_probe_positions(tokenizer, bio)
        sequences.append(tokens)
        positions.append([where[p] for p in pos_names])
        person_of.append(bio.person)
    person_arr = np.asarray(person_of, np.int64)
    probes = (
        [(p, a) for p in pos_names for a in attributes] if sweep else [(a, a) for a in attributes]
    )
    examples = _Examples("P", sequences, np.asarray(positions, np.int32), pos_names, person_arr)
    acc = _probe_accuracy(
        params,
        cfg,
        tokenizer,
        world,
        examples,
        train_people,
        test_people,
        probes,
        settings,
        attributes=attributes,
        birth_date=birth_date,
        sharder=sharder,
    )
    layer_idx = resolve_layers(settings.layers, cfg.n_layers)
    accuracy = {
        layer: {a: float(acc[(a, a)][s]) for a in attributes} for s, layer in enumerate(layer_idx)
    }
    sweep_out = None
    if sweep:
        sweep_out = {
            p: {
                layer: {a: float(acc[(p, a)][s]) for a in attributes}
                for s, layer in enumerate(layer_idx)
            }
            for p in pos_names
        }
    train_set = _people(train_people)
    return ProbeResult(
        kind="P",
        layers=layer_idx,
        attributes=list(attributes),
        accuracy=accuracy,
        chance=_chance(world, attributes, np.unique(person_arr), birth_date),
        num_train=int(sum(p in train_set for p in person_of)),
        num_test=int(sum(p not in train_set for p in person_of)),
        embedding_rank=settings.embedding_rank,
        sweep=sweep_out,
    )


def q_probe(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    train_people: np.ndarray | Sequence[int],
    test_people: np.ndarray | Sequence[int],
    settings: ProbeSettings = _DEFAULTS,
    *,
    attributes: Sequence[str] = ATTRIBUTES,
    birth_date: BirthDatePart = "date",
    sharder: Sharder = NO_SHARDING,
) -> ProbeResult:
    """Returns the Q-probing result: the input is the person's full name alone (prefix +
    tokens of the name); linear probes on the hidden state at the name's last token predict
    every attribute, per layer. One example per listed person."""
    people = np.concatenate(
        [np.asarray(train_people, np.int64).ravel(), np.asarray(test_people, np.int64).ravel()]
    )
    sequences = [q_probe_sequence(tokenizer, world.people[int(p)].full_name) for p in people]
    positions = np.asarray([[len(s) - 1] for s in sequences], np.int32)
    examples = _Examples("Q", sequences, positions, ["name"], people)
    acc = _probe_accuracy(
        params,
        cfg,
        tokenizer,
        world,
        examples,
        train_people,
        test_people,
        [("name", a) for a in attributes],
        settings,
        attributes=attributes,
        birth_date=birth_date,
        sharder=sharder,
    )
    layer_idx = resolve_layers(settings.layers, cfg.n_layers)
    accuracy = {
        layer: {a: float(acc[("name", a)][s]) for a in attributes}
        for s, layer in enumerate(layer_idx)
    }
    n_train = len(np.asarray(train_people).ravel())
    return ProbeResult(
        kind="Q",
        layers=layer_idx,
        attributes=list(attributes),
        accuracy=accuracy,
        chance=_chance(world, attributes, people, birth_date),
        num_train=n_train,
        num_test=len(people) - n_train,
        embedding_rank=settings.embedding_rank,
    )


def probe_size_curve(
    params: Mapping[str, Any],
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    world: BiosWorld,
    kind: Literal["P", "Q"],
    train_pool: np.ndarray | Sequence[int],
    test_people: np.ndarray | Sequence[int],
    sizes: Sequence[int],
    settings: ProbeSettings = _DEFAULTS,
    *,
    biographies: Sequence[Biography] = (),
    attributes: Sequence[str] = ATTRIBUTES,
    birth_date: BirthDatePart = "date",
    sharder: Sharder = NO_SHARDING,
) -> dict[int, ProbeResult]:
    """Returns {n: ProbeResult} of linear probes trained on the first n people of
    `train_pool` and tested on the same `test_people` for every n in `sizes`: the Q-probe
    (the name alone, its last token) or the P-probe (one biography per person: the first of
    `biographies` about them, read before each attribute's sentence). The hidden states are
    read once for all people; labels are numbered over every probed person's classes, and
    chance is 1 / the classes among them. Linear probes only (`settings.embedding_rank` 0)."""
    if settings.embedding_rank:
        raise ValueError("probe_size_curve trains linear probes: embedding_rank must be 0")
    pool = [int(p) for p in np.asarray(train_pool).ravel()]
    test = [int(p) for p in np.asarray(test_people).ravel()]
    if set(pool) & set(test):
        raise ValueError("train_pool and test_people overlap")
    if not sizes or min(sizes) < 1 or max(sizes) > len(pool):
        raise ValueError(f"sizes {list(sizes)} must lie in 1..{len(pool)} (the training pool)")
    people = np.asarray(pool + test, np.int64)
    if kind == "Q":
        sequences = [q_probe_sequence(tokenizer, world.people[int(p)].full_name) for p in people]
        positions = np.asarray([[len(s) - 1] * len(attributes) for s in sequences], np.int32)
    elif kind == "P":
        first: dict[int, Biography] = {}
        for b in biographies:
            first.setdefault(b.person, b)
        missing = [int(p) for p in people if int(p) not in first]
        if missing:
            raise ValueError(f"no biography of {len(missing)} probed people, e.g. {missing[:3]}")
        sequences, rows = [], []
        for p in people:
            tokens, where = p_probe_positions(tokenizer, first[int(p)])
            sequences.append(tokens)
            rows.append([where[a] for a in attributes])
        positions = np.asarray(rows, np.int32)
    else:
        raise ValueError(f"kind must be 'P' or 'Q', got {kind!r}")
    layer_idx = resolve_layers(settings.layers, cfg.n_layers)
    feats = hidden_features(
        params,
        cfg,
        sequences,
        positions,
        layers=layer_idx,
        batch_size=settings.feature_batch_size,
        pad_id=tokenizer.pad_id,
        sharder=sharder,
    )  # [S, N, K, D]
    labels = {a: _compact(probe_labels(world, a, people, birth_date)) for a in attributes}
    test_idx = np.arange(len(pool), len(people))
    chance = _chance(world, attributes, people, birth_date)
    out: dict[int, ProbeResult] = {}
    for n in sizes:
        train_idx = np.arange(int(n))
        acc = {
            a: train_linear_probe(
                feats[:, :, k],
                labels[a][0],
                train_idx,
                test_idx,
                labels[a][1],
                settings.steps,
                settings.lr,
                settings.seed,
                batch_size=settings.batch_size,
                weight_decay=settings.weight_decay,
            )
            for k, a in enumerate(attributes)
        }
        out[int(n)] = ProbeResult(
            kind=kind,
            layers=layer_idx,
            attributes=list(attributes),
            accuracy={
                layer: {a: float(acc[a][s]) for a in attributes}
                for s, layer in enumerate(layer_idx)
            },
            chance=chance,
            num_train=int(n),
            num_test=len(test),
        )
    return out
