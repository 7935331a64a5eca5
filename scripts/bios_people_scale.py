"""A bioS study against the number of people (issue 27 item 6): by default mixed training on
bioS single (configs/bios/mixed_scale.py), P_test extraction vs N.

    python scripts/bios_people_scale.py configs/bios/mixed_scale.py --people 200,1000,4000 \
        --seeds 0 --workdir runs/mixed_scale --figure docs/figures/bios_mixed_scale.png

One study per (N, seed) in WORKDIR/N<N>_s<seed> (`jaxknow.studies.bios.sweep`): the
config at N people, every stage's steps scaled by N / the config's num_people (each biography
seen as often as at the base N, times --exposure; each QA finetune as many epochs). Finished
points are skipped. Then WORKDIR/results.json and WORKDIR/<name>.png (P_test exact match and
memorisation vs N), copied to --figure. The curve reads the config's mixed-training rows
(`--recipe mixed`) or its pretrain + QA finetune rows (`--recipe pretrain+finetune`);
`--conditions single,celebrity` plots those rows' P_test side by side (celebrity helps
minority vs N:

    python scripts/bios_people_scale.py configs/bios/celebrity_scale.py:200 --people 200,1000 \
        --recipe pretrain+finetune --conditions single,celebrity --name celebrity_scale \
        --seeds 0 --workdir runs/celebrity_scale --figure docs/figures/bios_celebrity_scale.png)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.studies.bios import sweep as S  # noqa: E402
from jaxknow.studies.bios.sweep import comma_ints  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    S.add_curve_arguments(ap, seeds=[0])
    ap.add_argument("--people", type=comma_ints, default=[200, 1000, 4000])
    ap.add_argument("--exposure", type=float, default=1.0)
    ap.add_argument("--recipe", default="mixed", choices=["mixed", "pretrain+finetune"])
    ap.add_argument("--name", default="mixed_scale")
    ap.add_argument(
        "--conditions",
        default="",
        help="comma-separated condition rows to compare (e.g. single,celebrity): one P_test "
        "line each; default: the recipe's first row, with its memorisation",
    )
    args = ap.parse_args(argv)
    config = S.config_from_arguments(args)
    points = S.people_points(config, args.people, args.seeds, args.exposure)
    summary = S.run_curve(
        config,
        points,
        args.workdir,
        describe=lambda p: str({k: v for k, v in p.overrides.items() if k.endswith(".steps")}),
        recipe=args.recipe,
        name=args.name,
        xlabel="people (N)",
        title=f"bioS {args.recipe}: extraction vs number of people",
        command=shlex.join(["python", "scripts/bios_people_scale.py", *(argv or sys.argv[1:])]),
        figure=args.figure,
        dry_run=args.dry_run,
        conditions=[c for c in args.conditions.split(",") if c],
    )
    if args.conditions:
        print(f"the first condition's summary ({args.conditions.split(',')[0]}):", flush=True)
    for e in summary or []:
        print(
            f"N={e['x']:g}: P_test {100 * e['p_test_em']['mean']:.1f} "
            f"(chance {100 * e['chance']['mean']:.1f}), P_train "
            f"{100 * e['p_train_em']['mean']:.1f}, memorisation whole "
            f"{100 * e['memorisation_whole_value']['mean']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
