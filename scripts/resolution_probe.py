"""Reference-resolution diagnostic of the lab notebook (C9-C11, C16), by reference form.

    python scripts/resolution_probe.py CONFIG.py MODEL_DIR [MODEL_DIR ...] [--given]

Rebuilds the country world of a co-occurrence config (its ``world`` section and ``seed``) and,
for every base and novel fact, six passages that list the true tail and its wrong tails (each
position of the true tail twice) and stop where a reference starts: after "... The capital of
X is the" the ordinals are scored; after "... is the city named right after" / "just before"
the listed names (the answer is the true tail's neighbour). `--given` states the fact in the
passage first (an in-context resolution test). Prints one JSON line of accuracies per model;
chance is 1 / candidates. The study's built-in `resolution` subset holds the ordinal and
"just before" forms (`jaxknow.studies.cooccurrence.referencing.resolution_rows`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.eval.scoring import continuation_logprobs  # noqa: E402
from jaxknow.io.load import load_model  # noqa: E402
from jaxknow.studies.cooccurrence import countries  # noqa: E402
from jaxknow.studies.cooccurrence.fact_types import FactWorld, capitalize_first  # noqa: E402
from jaxknow.studies.cooccurrence.referencing import ORDINALS, listing_sentence, reference_start  # noqa: E402

FORMS = ("ordinal", "after", "before")


def config_of(config_path: str) -> tuple[Any, FactWorld]:
    """Returns (the co-occurrence config of a config file, its country world)."""
    spec = importlib.util.spec_from_file_location("study_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    fields = {f.name for f in dataclasses.fields(countries.CountriesConfig)} - {"seed"}
    opts = {k: v for k, v in dict(cfg.world).items() if k in fields}
    return cfg, countries.generate_countries(countries.CountriesConfig(**opts, seed=cfg.seed))


def items(
    world: FactWorld, split: str, form: str, given: bool
) -> tuple[list[str], list[str], np.ndarray, int]:
    """Returns (contexts, continuations, gold index per item, choices per item) of one form."""
    rng = random.Random(123)
    contexts: list[str] = []
    continuations: list[str] = []
    gold: list[int] = []
    k = 1 + world.num_wrong_tails
    for f in world.facts(split):
        info = world.relations[f.relation]
        wrong = list(world.wrong_tails[f])
        head, tail = world.phrase(f.head), world.phrase(f.tail, f.relation)
        for rep in range(6):
            pos = rep % k
            if (form == "after" and pos == 0) or (form == "before" and pos == k - 1):
                continue
            others = rng.sample(wrong, len(wrong))
            order = [world.phrase(t, f.relation) for t in others[:pos] + [f.tail] + others[pos:]]
            intro = listing_sentence(order, info.tail_kind_plural, info.tail_adjectives, rng)
            parts = [capitalize_first(intro)]
            if given:
                template = rng.choice(info.narrative_templates)
                parts.append(capitalize_first(template.format(head=head, tail=tail)))
            parts.append(reference_start(info.statement_prefix.format(head=head)))
            if form == "ordinal":
                choices, answer = [f" {o}" for o in ORDINALS[:k]], pos
            else:
                words = "right after" if form == "after" else "just before"
                parts.append(f"{info.tail_kind} named {words}")
                choices = [f" {o}" for o in order]
                answer = pos - 1 if form == "after" else pos + 1
            context = " ".join(parts)
            contexts += [context] * k
            continuations += choices
            gold.append(answer)
    return contexts, continuations, np.array(gold), k


def probe_row(world: FactWorld, model_dir: str, given: bool) -> dict[str, Any]:
    """Returns the accuracy of every split and reference form for the model in `model_dir`."""
    model = load_model(model_dir)
    row: dict[str, Any] = {"model": model_dir, "given": given}
    for split in ("base", "novel"):
        for form in FORMS:
            ctx, cont, gold, k = items(world, split, form, given)
            lp, _ = continuation_logprobs(
                model.params, model.cfg, model.tokenizer, ctx, cont, batch_size=64
            )
            row[f"{split}/{form}"] = round(float((lp.reshape(-1, k).argmax(1) == gold).mean()), 3)
    return row


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--given"]
    given = "--given" in sys.argv[1:]
    _, world = config_of(args[0])
    for model_dir in args[1:]:
        print(json.dumps(probe_row(world, model_dir, given)), flush=True)


if __name__ == "__main__":
    main()
