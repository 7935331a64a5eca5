"""Where can a linear probe read a person's attributes? (lab notebook E19)

    python scripts/probe_positions.py STUDY_WORKDIR MODEL_SUBDIR [MODEL_SUBDIR ...]

For each model of a finished bioS study (e.g. ``pretrain_multi5_permute_fullname`` and
``finetune_multi5_permute_fullname_lora`` of the quickstart's workdir) and each attribute, one
linear probe per layer (`jaxknow.eval.probing.train_linear_probe`, 1,000 full-batch steps) is
trained on the P_train people and tested on the P_test people, reading the hidden state at:

- ``name``: the person's full name alone, its last token (the study's Q-probe input);
- ``question_name``: the name's last token inside the QA prompt
  ("Question: What is the birth city of NAME? Answer:");
- ``question_end``: the prompt's last token, where the answer's first token is predicted.

Prints one JSON line per model and position: test accuracy per layer (0 = embeddings), the
mean over attributes, and chance (the most frequent P_test value). If a probe trained on the
same people reads the answer at ``question_end`` but not at ``name``, the probe has enough
people and the attributes are assembled after the name.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.data.jsonl import read_jsonl  # noqa: E402
from jaxknow.eval.probing import hidden_features, train_linear_probe  # noqa: E402
from jaxknow.io.load import load_model  # noqa: E402
from jaxknow.studies.bios.world import ATTRIBUTES, qa_prompt  # noqa: E402

POSITIONS = ("name", "question_name", "question_end")


def questions(data_dir: Path) -> dict[tuple[int, str], str]:
    """Returns {(person, attribute): question} over the study's P_train and P_test QA."""
    out = {}
    for split in ("train", "test"):
        for row in read_jsonl(data_dir / f"qa_{split}.jsonl"):
            out[(int(row["person"]), row["attribute"])] = row["question"]
    return out


def read_points(tokenizer, name: str, question: str) -> dict[str, tuple[list[int], int]]:
    """Returns {position kind: (tokens, index read)} for one person and question."""
    pre = tokenizer.prefix()
    alone = pre + tokenizer.encode(name)
    prompt = qa_prompt(question)
    full = pre + tokenizer.encode(prompt)
    cut = prompt.index(name) + len(name)
    head = pre + tokenizer.encode(prompt[:cut])
    if full[: len(head)] != head:
        raise ValueError(f"the name's tokens differ inside the prompt: {prompt!r}")
    return {
        "name": (alone, len(alone) - 1),
        "question_name": (full, len(head) - 1),
        "question_end": (full, len(full) - 1),
    }


def main() -> None:
    study, *models = sys.argv[1:]
    data = Path(study) / "data"
    people = {int(r["person"]): r for r in read_jsonl(data / "people.jsonl")}
    qs = questions(data)
    train = sorted({p for (p, _), _ in qs.items() if people[p]["split"] == "train"})
    test = sorted({p for (p, _), _ in qs.items() if people[p]["split"] == "test"})
    order = train + test
    train_idx, test_idx = np.arange(len(train)), np.arange(len(train), len(order))
    for sub in models:
        model = load_model(Path(study) / sub)
        per_position: dict[str, dict[str, list[float]]] = {k: {} for k in POSITIONS}
        chance = {}
        name_feats = None
        for attribute in ATTRIBUTES:
            values = [people[p][attribute] for p in order]
            classes = {v: i for i, v in enumerate(sorted(set(values)))}
            labels = np.asarray([classes[v] for v in values])
            chance[attribute] = Counter(labels[test_idx]).most_common(1)[0][1] / len(test_idx)
            points = [
                read_points(model.tokenizer, people[p]["name"], qs[(p, attribute)]) for p in order
            ]
            for kind in POSITIONS:
                if kind == "name" and name_feats is not None:
                    feats = name_feats  # the name alone does not depend on the attribute
                else:
                    seqs = [pt[kind][0] for pt in points]
                    at = [pt[kind][1] for pt in points]
                    feats = hidden_features(model.params, model.cfg, seqs, at, batch_size=64)
                    if kind == "name":
                        name_feats = feats
                acc = train_linear_probe(
                    feats, labels, train_idx, test_idx, len(classes), steps=1000, lr=1e-2, seed=0
                )
                per_position[kind][attribute] = [round(float(a), 3) for a in acc]
        for kind in POSITIONS:
            layers = np.asarray(list(per_position[kind].values()))
            row = {
                "model": sub,
                "position": kind,
                "mean_per_layer": [round(float(x), 3) for x in layers.mean(0)],
                "last_layer": {a: v[-1] for a, v in per_position[kind].items()},
                "chance_mean": round(float(np.mean(list(chance.values()))), 3),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
