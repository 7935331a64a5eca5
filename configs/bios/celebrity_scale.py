"""Celebrity helps minority at the largest N the 2-core CPU trains in ~2 hours (issue 27
item 6; paper Result 6: minority 4.4 % -> 86.8 % at N = 100,000): configs/bios/celebrity.py
at N = 2,000 people (1,000 celebrities, 1,000 minority), both pretrainings' steps scaled with
N (20,000 steps of 4 x 256 each: every biography seen as often as at N = 200) and the QA
finetune's too (the same epochs over P_train's QA). The argument sets another N.

    python -m launch.experiment --config=configs/bios/celebrity_scale.py \
        --workdir=runs/celebrity_scale
"""

from ml_collections import ConfigDict

from configs.bios.celebrity import get_config as celebrity
from jaxknow.studies.bios.sweep import apply_overrides, scale_people

PEOPLE = 2000


def get_config(people: str | None = None) -> ConfigDict:
    c = celebrity()
    c.eval.max_people = 200
    return apply_overrides(c, scale_people(c, int(people or PEOPLE)))
