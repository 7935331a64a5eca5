"""One augmented model for the probe-size curve (issue 27 item 6): Q- and P-probe accuracy
against the number of probe-training people (100 -> 5,000), per layer
(scripts/bios_probe_scale.py). The quickstart at N = 6,000 people (room for 5,000
probe-training and 1,000 held-out people), multi5x10+permute+fullname only, pretrained for
40,000 steps of 4 x 256 (each person seen 2/3 as often as in the quickstart: what fits ~1.5 h
of the 2-core CPU; the argument sets that exposure factor), one LoRA QA finetune of 1,500
steps (a positive control: is the knowledge extractable at this N?), no probing in the study.

    python -m launch.experiment --config=configs/bios/probe_scale.py --workdir=runs/probe_scale
    python scripts/bios_probe_scale.py runs/probe_scale pretrain_multi5_permute_fullname \
        --train_people 100,300,1000,3000,5000 --test_people 1000
"""

from ml_collections import ConfigDict

from configs.bios.quickstart import get_config as quickstart
from jaxknow.studies.bios.sweep import apply_overrides, scale_people

PEOPLE = 6000


def get_config(exposure: str | None = None) -> ConfigDict:
    c = quickstart()
    c.conditions = ["multi5x10+permute+fullname"]
    c.probing.enabled = False
    c.eval.max_people = 200
    c = apply_overrides(c, scale_people(c, PEOPLE, float(exposure or 2 / 3), stages=["pretrain"]))
    c.finetune.steps = 1500
    return c
