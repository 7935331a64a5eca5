"""The bioS world as a data directory (world kind ``bios``): biographies per augmentation
(sources ``bios_<aug>``, with `redraws` independent draws of every augmented corpus), QA of
P_train / P_test (``qa_train`` / ``qa_test``, loss on the answer), the optional celebrity
corpus; the leakage guard refuses the world before anything is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxknow.data import records
from jaxknow.data.world_builders import (
    WorldConfigError,
    encode_docs,
    encode_qa,
    make_tokenizer,
    world_options,
    write_files,
)
from jaxknow.studies.bios import world as bios
from jaxknow.studies.bios.leakage import check_no_leak


def aug_source_name(aug_name: str) -> str:
    """Returns the source name of an augmentation ("multi5+permute" -> "bios_multi5_permute")."""
    return "bios_" + aug_name.replace("+", "_")


def bios_options(world: Mapping[str, Any], seed: int) -> tuple[bios.BiosConfig, dict[str, Any]]:
    """Returns (BiosConfig, checked options) of a bios world description without generating
    the population; raises WorldConfigError naming the bad option."""
    own = {
        "num_people": 1000,
        "augmentations": ["single"],
        "train_fraction": 0.5,
        "celebrity_fraction": 0.0,
        "celebrity_augmentation": "multi5+permute+fullname",
        "redraws": 1,
    }
    for f in dataclasses.fields(bios.BiosConfig):
        own.setdefault(f.name, f.default)
    own.pop("seed")
    opts = world_options({k: v for k, v in world.items() if k != "kind"}, "bios", own)
    cfg_fields = {f.name for f in dataclasses.fields(bios.BiosConfig)}
    r = opts["redraws"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise WorldConfigError(f"data.world (bios): redraws must be an int >= 1, got {r!r}")
    try:
        bcfg = bios.BiosConfig(**{k: v for k, v in opts.items() if k in cfg_fields}, seed=seed)
        opts["augmentations"] = [bios.Augmentation.parse(a) for a in opts["augmentations"]]
        opts["celebrity_augmentation"] = bios.Augmentation.parse(opts["celebrity_augmentation"])
    except ValueError as e:
        raise WorldConfigError(f"data.world (bios): {e}") from None
    return bcfg, opts


def bios_world(world: Mapping[str, Any], seed: int) -> tuple[bios.BiosWorld, dict[str, Any]]:
    """Returns (BiosWorld, checked options) of a bios world description — the same world the
    builder materialises for this seed."""
    bcfg, opts = bios_options(world, seed)
    return bios.generate_world(bcfg), opts


def bios_corpora(
    w: bios.BiosWorld, opts: Mapping[str, Any], seed: int
) -> dict[str, list[bios.Biography]]:
    """Returns source name -> biographies, per augmentation (and the celebrity corpus).

    With ``redraws`` = R > 1 every augmented corpus (any augmentation but "single", which is
    one fixed biography per person by definition) holds R independent draws of its
    augmentation (draw 0 is the R = 1 corpus): the text about a person changes from one pass
    over the data to the next while what it says stays the same. The celebrity setting has two
    sources: ``bios_celebrity`` (the celebrities' augmented biographies, re-drawn) and
    ``bios_minority`` (everyone else's one single biography), so that a study can weight them.
    """
    redraws = int(opts.get("redraws", 1))

    def draws(aug: bios.Augmentation) -> int:
        return redraws if aug.name != "single" else 1

    corpora: dict[str, list[bios.Biography]] = {}
    for i, aug in enumerate(opts["augmentations"]):
        corpora[aug_source_name(aug.name)] = [
            b
            for r in range(draws(aug))
            for b in bios.render_biographies(w, aug, seed + 1000 * i + 100_003 * r)
        ]
    if opts["celebrity_fraction"] > 0:
        n_celeb = int(round(opts["celebrity_fraction"] * w.num_people))
        celebs = sorted(int(i) for i in w.train_ids[:n_celeb])
        minority = sorted(set(range(w.num_people)) - set(celebs))
        caug = opts["celebrity_augmentation"]
        corpora["bios_celebrity"] = [
            b
            for r in range(draws(caug))
            for b in bios.render_biographies(w, caug, seed + 999 + 100_003 * r, people=celebs)
        ]
        corpora["bios_minority"] = bios.render_biographies(
            w, bios.Augmentation(), seed + 998, people=minority
        )
    return corpora


def build_bios(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """bioS: biographies per augmentation (sources ``bios_<aug>``), QA of P_train / P_test
    (sources ``qa_train`` / ``qa_test``, loss on the answer), optional celebrity corpus."""
    w, opts = bios_world(world, seed)
    corpora = bios_corpora(w, opts, seed)
    qa_train = bios.qa_items(w, w.train_ids)
    qa_test = bios.qa_items(w, w.test_ids)
    files = {f"{name}.jsonl": bios.bios_rows(b) for name, b in corpora.items()}
    files["bios.jsonl"] = bios.bios_rows(next(iter(corpora.values())))
    files["qa_train.jsonl"] = qa_train
    files["qa_test.jsonl"] = qa_test
    train_set = set(w.train_ids.tolist())
    # Refuse the world before anything is written if a question about a P_test person
    # reaches a training source (every corpus and re-draw, the QA of P_train).
    check_no_leak(
        {n.removesuffix(".jsonl"): rows for n, rows in files.items() if n != "qa_test.jsonl"},
        {w.people[int(i)].full_name: int(i) for i in w.test_ids},
    )
    files["people.jsonl"] = [
        {
            "person": p.index,
            "name": p.full_name,
            "gender": p.gender,
            **p.attributes,
            "split": "train" if p.index in train_set else "test",
        }
        for p in w.people
    ]
    written = write_files(out, files)
    texts = [b.text for bs in corpora.values() for b in bs] + [
        bios.qa_prompt(r["question"]) + bios.qa_target(r["answer"]) for r in qa_train
    ]
    names = [p.full_name for p in w.people] + [
        v for a, vals in w.attribute_values.items() if a != "birth_date" for v in vals
    ]
    tok = make_tokenizer(opts, texts, out, names, "bios world: entity names and values")
    sources = {}
    for name, bs in corpora.items():
        sources[name] = records.write_source(
            out, name, encode_docs(tok, [b.text for b in bs]), opts["num_shards"]
        )
    for name, rows in (("qa_train", qa_train), ("qa_test", qa_test)):
        sources[name] = records.write_source(
            out,
            name,
            encode_qa(
                tok, [bios.qa_prompt(r["question"]) for r in rows], [r["answer"] for r in rows]
            ),
            opts["num_shards"],
        )
    return {
        "sources": sources,
        "files": written,
        "vocab_size": tok.vocab_size,
        "num_people": w.num_people,
    }
