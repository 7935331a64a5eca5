"""Q- and P-probe accuracy against the number of probe-training people, per layer (issue 27
item 6), on one pretrained model of a finished bioS study (configs/bios/probe_scale.py):

    python scripts/bios_probe_scale.py runs/probe_scale pretrain_multi5_permute_fullname \
        --train_people 100,300,1000,3000,5000 --test_people 1000

The people of the study's world are shuffled (seed --seed): the first --test_people are the
held-out people of every probe, the next max(--train_people) the training pool; for each n
the probes train on the pool's first n people (`eval.bios_probing.probe_size_curve`: the
Q-probe at the name's last token, the P-probe before each attribute's sentence of the
person's first biography in --source, default the study's first augmented corpus; linear
probes, --steps full-batch AdamW steps, the birth date as its year). Writes OUT/results.json
(accuracy per n, layer and attribute; chance) and OUT/probe_scale_{q,p}.png (mean over
attributes vs n, one line per layer), copied to --figure_prefix_{q,p}.png when given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.eval.plots import plot_per_layer  # noqa: E402
from jaxknow.eval.probing import ProbeSettings  # noqa: E402
from jaxknow.experiments import common  # noqa: E402
from jaxknow.io.load import load_model  # noqa: E402
from jaxknow.studies.bios.corpus import aug_source_name, bios_corpora, bios_world  # noqa: E402
from jaxknow.studies.bios.probing import probe_size_curve  # noqa: E402
from jaxknow.studies.bios.sweep import comma_ints  # noqa: E402


def split_people(num_people: int, test: int, pool: int, seed: int) -> tuple[list[int], list[int]]:
    """Returns (training pool, held-out people): disjoint, from one seeded shuffle."""
    if test + pool > num_people:
        raise SystemExit(f"{test} held-out + {pool} training people > the world's {num_people}")
    order = np.random.default_rng(seed).permutation(num_people)
    return [int(p) for p in order[test : test + pool]], [int(p) for p in order[:test]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a finished bioS study's workdir (its results.json)")
    ap.add_argument("model", help="the model's stage directory inside it")
    ap.add_argument("--train_people", type=comma_ints, default=[100, 300, 1000, 3000, 5000])
    ap.add_argument("--test_people", type=int, default=1000)
    ap.add_argument("--kinds", default="Q,P")
    ap.add_argument("--source", default="", help="biography corpus of the P-probe")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="default STUDY/probe_scale")
    ap.add_argument("--figure_prefix", default="", help="e.g. docs/figures/bios_probe_scale")
    args = ap.parse_args(argv)
    study = Path(args.study)
    res = json.loads((study / "results.json").read_text())
    world_opts, seed = res["world"], int(res["seed"])
    world, opts = bios_world(world_opts, seed)
    pool, test = split_people(world.num_people, args.test_people, max(args.train_people), args.seed)
    model = load_model(study / args.model)
    settings = ProbeSettings(steps=args.steps, lr=args.lr, seed=args.seed)
    kinds = [k.strip().upper() for k in args.kinds.split(",") if k.strip()]
    bios = []
    if "P" in kinds:
        source = args.source or aug_source_name(str(world_opts["augmentations"][0]))
        bios = bios_corpora(world, opts, seed)[source]
    out_dir = Path(args.out) if args.out else study / "probe_scale"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"study": str(study), "model": args.model, "test_people": len(test)}
    for kind in kinds:
        curve = probe_size_curve(
            model.params,
            model.cfg,
            model.tokenizer,
            world,
            kind,
            pool,
            test,
            args.train_people,
            settings,
            biographies=bios,
            birth_date="year",
        )
        results[kind] = {str(n): r.to_dict() for n, r in curve.items()}
        sizes = sorted(curve)
        layers = curve[sizes[0]].layers
        series = {
            f"layer {layer}": [
                float(np.mean(list(curve[n].accuracy[layer].values()))) for n in sizes
            ]
            for layer in layers
        }
        chance = float(np.mean(list(curve[sizes[0]].chance.values())))
        png = plot_per_layer(
            series,
            out_dir / f"probe_scale_{kind.lower()}.png",
            f"{kind}-probe of {args.model}: mean over attributes, {len(test)} held-out people",
            "test accuracy",
            xlabel="probe-training people",
            x=sizes,
            reference={"chance (1 / classes)": chance},
            ylim=(0.0, 1.0),
            log_x=True,
        )
        if args.figure_prefix:
            Path(args.figure_prefix).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, f"{args.figure_prefix}_{kind.lower()}.png")
        for n in sizes:
            row = [round(float(np.mean(list(curve[n].accuracy[la].values()))), 3) for la in layers]
            print(
                json.dumps(
                    {
                        "kind": kind,
                        "train_people": n,
                        "mean_per_layer": row,
                        "chance": round(chance, 3),
                    }
                ),
                flush=True,
            )
    common.write_json(out_dir / "results.json", results)


if __name__ == "__main__":
    main()
