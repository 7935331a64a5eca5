"""Materialising worlds: JSONL subsets, a tokenizer and tokenized ArrayRecord sources.

`materialize(world, out_dir, seed)` dispatches on ``world["kind"]`` to its builder (the table
`jaxknow.data.world_builders.WORLD_KINDS`); a world config (`launch.data`) is a
`MaterializeConfig`; `ensure_sources` materialises a training run's data directory when
sources are missing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxknow.data import records
from jaxknow.data.world_builders import WorldConfigError, world_kind


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaterializeConfig:
    """A world config (`configs/worlds/`, `launch.data`): the world description to
    materialise (``world["kind"]`` picks its builder) and the seed it is drawn with."""

    seed: int = 0
    world: dict[str, Any]


def materialize(world: Mapping[str, Any], out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Writes a world's JSONL subsets, tokenizer and tokenized sources to `out_dir`; returns
    a manifest {"kind", "sources": {name: index}, "files": [...], ...} also saved as
    `manifest.json`."""
    world = dict(world)
    kind = world.pop("kind", None)
    build = world_kind(kind).build
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = build(world, out, seed)
    manifest = {"kind": kind, "seed": seed, "world": world, **manifest}
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(out / "manifest.json")
    return manifest


def ensure_sources(
    data_dir: str | Path, names: Sequence[str], world: Mapping[str, Any] | None, seed: int
) -> None:
    """Makes sure every named source exists in `data_dir`, materialising `world` if not.

    Process 0 writes; the others wait at a barrier. Raises FileNotFoundError naming the
    missing sources when there is no world to build them from.
    """
    data_dir = Path(data_dir)

    def missing() -> list[str]:
        return [n for n in names if not (data_dir / f"{n}.json").is_file()]

    def build_here() -> None:
        if world is None:
            raise FileNotFoundError(
                f"data sources {missing()} not found in {data_dir} and data.world is not set"
            )
        manifest = materialize(world, data_dir, seed)
        still = [n for n in names if n not in manifest.get("sources", {})]
        if still:
            raise WorldConfigError(
                f"data.sources {still}: the world {world.get('kind')!r} does not produce "
                f"them (it produces {sorted(manifest.get('sources', {}))})"
            )

    if missing() and jax.process_index() == 0:
        build_here()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxknow_data_ready")
        # Hosts that do not share process 0's disk (a TPU pod's local disks) build their own
        # copy: materialisation is deterministic, so every host reads the same bytes.
        if missing():
            build_here()
    for n in names:
        records.read_index(data_dir, n)


def check_world_matches(data_dir: str | Path, world: Mapping[str, Any] | None, seed: int) -> None:
    """Raises WorldConfigError naming the differing fields when `data_dir` already holds data
    materialised from another world description or seed than `world` / `seed` (the data
    would otherwise be used as it is). Nothing is checked without a world or a manifest."""
    manifest = Path(data_dir) / "manifest.json"
    if world is None or not manifest.is_file():
        return
    try:
        built = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise WorldConfigError(f"{manifest} is unreadable ({e})") from None
    want = json.loads(json.dumps(dict(world), default=str))
    have = {"kind": built.get("kind"), **(built.get("world") or {})}
    diffs = [
        f"data.world.{k} (data has {have.get(k)!r}, config {want.get(k)!r})"
        for k in sorted(set(want) | set(have))
        if want.get(k) != have.get(k)
    ]
    if built.get("seed") is not None and built.get("seed") != seed:
        diffs.append(f"data seed (data has {built.get('seed')}, config {seed})")
    if diffs:
        raise WorldConfigError(
            f"{data_dir} holds data built from another world: {'; '.join(diffs)}; use a new "
            f"--workdir (or data.dir), or delete {data_dir} to rebuild it"
        )


def check_vocab(data_dir: str | Path, model_vocab: int) -> None:
    """Raises WorldConfigError when the data's tokenizer has more ids than the model's
    vocabulary (`model.vocab_size`)."""
    manifest = Path(data_dir) / "manifest.json"
    if manifest.is_file():
        vocab = json.loads(manifest.read_text()).get("vocab_size")
        if vocab is not None and vocab > model_vocab:
            raise WorldConfigError(
                f"model.vocab_size={model_vocab} is smaller than the data's vocabulary "
                f"({vocab} ids, {manifest})"
            )
