"""Materialise a world: ``python -m launch.data --config=configs/worlds/NAME.py[:preset]
--out=DIR``. Writes the facts, every corpus and evaluation subset as JSONL, the tokenizer and
the tokenized ArrayRecord sources the trainer reads. A training config works too (its
``data.world`` is used)."""

from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import config_flags

from launch.common import run_app, run_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "World (or training) config file.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "out"])


def world_of(config: Any) -> tuple[dict[str, Any], int]:
    """Returns (the world description, its seed) of a world config (`MaterializeConfig`) or
    of a training config (its ``data.world``, drawn with the seed its training run uses)."""
    from jaxknow.config import ConfigError, parse, to_plain
    from jaxknow.data.build import MaterializeConfig
    from jaxknow.train.setup import parse_run_config

    values = to_plain(config)
    if "world" in values or "data" not in values:
        job = parse(MaterializeConfig, values)
        return job.world, job.seed
    spec = parse_run_config(values)
    if not spec.data.world:
        raise ConfigError("data.world: a training config materialises its `data.world`; none set")
    return dict(spec.data.world), spec.data.seed if spec.data.seed is not None else spec.seed


def main(argv: list[str]) -> None:
    del argv
    from pathlib import Path

    from jaxknow.config import ConfigError
    from jaxknow.data.build import materialize

    def go() -> None:
        world, seed = world_of(_CONFIG.value)
        out = Path(_OUT.value)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out={out} exists and is not a directory")
        manifest = materialize(world, out, seed)
        for name, index in sorted(manifest["sources"].items()):
            print(f"source {name}: {index['num_docs']} documents, {index['num_tokens']} tokens")
            issues = index.get("ingest", {}).get("issues", {})
            if issues.get("counts"):  # a streamed corpus: bad input skipped and counted
                print(f"  skipped {issues['counts']}; first: " + "; ".join(issues["examples"][:3]))
        for f in manifest.get("files", []):
            print(f"wrote {out / f}")
        print(f"tokenizer: {out / 'tokenizer.json'} (vocabulary {manifest['vocab_size']})")

    run_main(go)


if __name__ == "__main__":
    run_app(main)
