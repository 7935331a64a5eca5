"""Celebrity helps minority, in miniature (Physics of LMs 3.1, Result 6).

The quickstart's world and model; two pretrainings: every person with one plain biography
(bioS single), and a "celebrity" corpus in which the P_train half (the celebrities) get
multi5x10+permute+fullname biographies (the quickstart's world.redraws=10: 50 renderings per
celebrity; the paper's celebrities have multi5+permute+fullname, 5 renderings) while the
P_test half (the minority) keep their single biography. Both are QA-finetuned on the
celebrities and asked about the minority: the paper's minority accuracy rises from 4.4 % to
86.8 %. `celebrity_minority_weight=1.0` draws half of the celebrity pretraining's biographies
from the minority, so each minority person is seen about as often as in the single
pretraining (as one corpus they would be ~10 times less).

    python -m launch.experiment --config=configs/bios/celebrity.py --workdir=runs/celebrity
"""

from ml_collections import ConfigDict

from configs.bios.quickstart_4x2000 import get_config as quickstart


def get_config() -> ConfigDict:
    c = quickstart()
    c.conditions = ["single"]
    c.celebrity = True
    c.celebrity_minority_weight = 1.0
    # drawn world.redraws times: the report names it multi5x10+permute+fullname
    c.world.celebrity_augmentation = "multi5+permute+fullname"
    c.probing.enabled = False
    return c
