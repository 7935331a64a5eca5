"""Materialise a world: ``python -m launch.data --config=configs/worlds/NAME.py[:preset]
--out=DIR``. Writes the facts, every corpus and evaluation subset as JSONL, the tokenizer and
the tokenized ArrayRecord sources the trainer reads. A training config works too (its
``data.world`` is used)."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch.common import run_app, run_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "World (or training) config file.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "out"])


def main(argv: list[str]) -> None:
    del argv
    from pathlib import Path

    from jaxknow.config import ConfigError, to_plain
    from jaxknow.data.build import materialize

    def go() -> None:
        cfg = to_plain(_CONFIG.value)
        world = cfg.get("world") or (cfg.get("data") or {}).get("world")
        if not world:
            raise ConfigError("config: needs a `world` section (or `data.world`)")
        seed = cfg.get("seed", 0)
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
