"""Mixed training on bioS single at N people (issue 27 item 6; paper Result 1: 86.6 % at
N = 100,000): the quickstart's world, model and mixed stage (biographies + P_train QA, 4 QA
documents per biography), no plain pretraining or finetune, no probing. The argument sets N,
the mixed steps scaled with it so that every biography is seen as often as at N = 200 (2,000
steps of 4 x 256): `configs/bios/mixed_scale.py:4000` is 40,000 steps. The curve over N:

    python scripts/bios_people_scale.py configs/bios/mixed_scale.py --people 200,1000,4000 \
        --seeds 0 --workdir runs/mixed_scale --figure docs/figures/bios_mixed_scale.png
"""

from ml_collections import ConfigDict

from configs.bios.quickstart_4x2000 import get_config as quickstart
from jaxknow.studies.bios.sweep import apply_overrides, scale_people


def get_config(people: str | None = None) -> ConfigDict:
    c = quickstart()
    c.conditions = ["single"]
    c.mixed.enabled = True
    c.pretrain_finetune = False
    c.probing.enabled = False
    c.eval.max_people = 200
    if people:
        c = apply_overrides(c, scale_people(c, int(people), stages=["mixed"]))
    return c
