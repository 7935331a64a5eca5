"""Resolution curriculum on its own (lab notebook C17): can the model learn to resolve references
in context from drills alone?

    python scripts/resolution_drills.py CONFIG.py WORKDIR [DRILLS [STEPS [BATCH]]]

A drill is a worked referencing passage about a made-up country (never one of the world's):
the world's own tails of one relation listed (the true one and the world's number of wrong
ones), the fact stated, then the true tail referenced in one of the world's reference forms
("... The eagle is the national animal of Finenia. The national animal of Finenia is the second
of them."). A fresh head per drill means a drill can only be predicted by resolving the
reference in context. The script writes DRILLS drills (default 30,000) as a `jsonl` world
tokenized with the co-occurrence config's world tokenizer, trains the config's model on them
from scratch with the config's base-stage recipe (BATCH rows, default 16, for STEPS steps,
default 600), and prints `scripts/resolution_probe.py`'s accuracies with the fact stated in the
passage, on the world's facts (heads the drills never name). Chance is 1 / candidates.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.data import build  # noqa: E402
from jaxknow.experiments import common  # noqa: E402
from jaxknow.studies.cooccurrence import countries  # noqa: E402
from jaxknow.studies.cooccurrence.fact_types import FactWorld  # noqa: E402
from jaxknow.studies.cooccurrence.referencing import render_referencing  # noqa: E402
from jaxknow.studies.cooccurrence.study import parse_study  # noqa: E402
from scripts.resolution_probe import config_of, probe_row  # noqa: E402


def drills(world: FactWorld, n: int, seed: int) -> list[str]:
    """Returns `n` worked referencing passages about made-up countries (see the module doc)."""
    taken = {name.lower() for name in world.all_entity_names()}
    heads = countries.generate_names("country", 4000, seed=777 + seed, taken=taken)
    pools = {
        r: sorted({f.tail for f in world.all_facts if f.relation == r}) for r in world.relations
    }
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        relation = rng.choice(sorted(pools))
        info = world.relations[relation]
        tail, *wrong = rng.sample(pools[relation], 1 + world.num_wrong_tails)
        out += render_referencing(
            rng.choice(heads),
            tail,
            wrong,
            info.reference_templates,
            1,
            rng,
            kind=info.tail_kind,
            kind_plural=info.tail_kind_plural,
            phrase=lambda t, r=relation: world.phrase(t, relation=r),
            adjectives=info.tail_adjectives,
            given_templates=info.narrative_templates,
        )
    return out


def main() -> None:
    config_path, workdir, *rest = sys.argv[1:]
    n, steps, batch = ([int(x) for x in rest] + [30_000, 600, 16][len(rest) :])[:3]
    cfg, world = config_of(config_path)
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    world_dir, data = wd / "world", wd / "data"
    if not (world_dir / "manifest.json").is_file():  # the world's tokenizer
        build.materialize(cfg.world.to_dict(), world_dir, cfg.seed)
    path = wd / "drills.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in drills(world, n, cfg.seed)))
    if not (data / "manifest.json").is_file():
        corpus = dict(
            kind="jsonl",
            paths=[str(path)],
            source="corpus_drills",
            tokenizer=str(world_dir / "tokenizer.json"),
        )
        build.materialize(corpus, data, cfg.seed)
    study = parse_study(cfg)
    # the config's base-stage recipe (the quick config: first-fit x 256, lr 3e-3, wd 0.1)
    stage = dataclasses.replace(study.base, steps=steps, batch_size=batch)
    model_dir = wd / "model"
    common.run_stage(
        "drills",
        common.stage_spec(
            study.model,
            study.mesh,
            stage,
            seed=study.seed,
            sources=[{"name": "corpus_drills"}],
            data_dir=data,
        ),
        model_dir,
    )
    print(json.dumps(probe_row(world, str(model_dir), given=True)), flush=True)


if __name__ == "__main__":
    main()
