"""One augmented model for the probe-size curve (issue 27 item 6): Q- and P-probe accuracy
against the number of probe-training people, per layer (scripts/bios_probe_scale.py). The
quickstart at N people (default 2,000: room for 1,500 probe-training and 500 held-out people),
multi5x10+permute+fullname only, its pretraining steps scaled with N (20,000 steps of 4 x 256 at
N = 2,000: every person seen as often as in the quickstart), one LoRA QA finetune of 1,500 steps
(a positive control: is the knowledge extractable at this N?), no probing in the study.

The argument is `N` or `N,EXPOSURE` (EXPOSURE: the pretraining's exposures per person relative
to the quickstart, a number or a fraction such as 2/3). Lab notebook E24: at `6000,2/3` (40,000
steps) the model sat on a loss plateau for 17,000 steps (memorisation of the augmented
biographies ~18 %, no rise) and was stopped there (its checkpoint, where kept, resumes with
`--config=configs/bios/probe_scale.py:6000,2/3 --workdir=runs/probe_scale`).

    python -m launch.experiment --config=configs/bios/probe_scale.py --workdir=runs/probe_2000
    python scripts/bios_probe_scale.py runs/probe_2000 pretrain_multi5_permute_fullname \\
        --train_people 100,300,1000,1500 --test_people 500
"""

from fractions import Fraction

from ml_collections import ConfigDict

from configs.bios.quickstart_4x2000 import get_config as quickstart
from jaxknow.studies.bios.sweep import apply_overrides, scale_people

PEOPLE = 2000


def get_config(arg: str | None = None) -> ConfigDict:
    people, _, exposure = (arg or str(PEOPLE)).partition(",")
    c = quickstart()
    c.conditions = ["multi5x10+permute+fullname"]
    c.probing.enabled = False
    c.eval.max_people = 200
    factor = float(Fraction(exposure)) if exposure else 1.0
    c = apply_overrides(c, scale_people(c, int(people), factor, stages=["pretrain"]))
    c.finetune.steps = 1500
    return c
