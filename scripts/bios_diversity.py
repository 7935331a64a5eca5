"""The bioS diversity curve (issue 27 item 2): P_test extraction and memorisation against
renderings per person at a fixed token budget.

    python scripts/bios_diversity.py configs/bios/quickstart_4x2000.py \
        --renderings 1,5,10,25,50,100 --seeds 0,1 --workdir runs/diversity

One bioS study per (R, seed) in WORKDIR/R<R>_s<seed> (`jaxknow.studies.bios.sweep`): the
config's pretraining (quickstart_4x2000.py's 2,000 steps of 4 x 256, d128 x 4) and QA finetune
on a world with R renderings per person (R = 1: bioS single; R = 5: the paper's
multi5+permute+fullname, no re-draws; R = 5 D: multi5xD+permute+fullname), no probing, no mixed
training. Finished points are skipped, so the same command resumes. Then WORKDIR/results.json
(per point and per R: P_test QA exact match, whole-value and first-token memorisation,
renderings per person, exposures per rendering) and WORKDIR/diversity.png, copied to --figure.
`--set KEY=VALUE` overrides the config (e.g. `--set pretrain.steps=20` for a smoke run);
`--dry_run` prints the points and the estimate only.
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
    S.add_curve_arguments(ap, seeds=[0, 1])
    ap.add_argument("--renderings", type=comma_ints, default=[1, 5, 10, 25, 50, 100])
    ap.set_defaults(figure="docs/figures/bios_diversity.png")
    args = ap.parse_args(argv)
    config = S.config_from_arguments(args)
    points = S.diversity_points(args.renderings, args.seeds)
    summary = S.run_curve(
        config,
        points,
        args.workdir,
        describe=lambda p: p.overrides["conditions"][0],
        recipe="pretrain+finetune",
        name="diversity",
        xlabel="renderings per person (R)",
        title="bioS: extraction vs renderings per person, fixed token budget",
        command=shlex.join(["python", "scripts/bios_diversity.py", *(argv or sys.argv[1:])]),
        figure=args.figure,
        dry_run=args.dry_run,
    )
    for e in summary or []:
        print(
            f"R={e['x']:g}: P_test {100 * e['p_test_em']['mean']:.1f} "
            f"({100 * e['p_test_em']['min']:.1f}-{100 * e['p_test_em']['max']:.1f}), "
            f"memorisation whole {100 * e['memorisation_whole_value']['mean']:.1f}, "
            f"first token {100 * e['memorisation_first_token']['mean']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
