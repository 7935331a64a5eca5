"""The bioS quickstart as it was from lab notebook E20 to E26: model d128 x 4 layers,
pretraining 2,000 steps of 4 x 256 tokens, 4 steps per jitted call (on a GPU: the quickstart's
GPU default unchanged). The diversity curve (E21), the people-scale curves (E22, E24) and the
celebrity studies (E23) were measured on this shape, and their configs build on it so that
their commands still reproduce those figures. 9.5 min on 2 CPU cores (E26): single 6.8 % vs
multi5x10+permute+fullname 90.5 % held-out extraction, seed 0.

    python -m launch.experiment --config=configs/bios/quickstart_4x2000.py --workdir=runs/q4
"""

import jax
from ml_collections import ConfigDict

from configs.bios.quickstart import get_config as quickstart


def get_config() -> ConfigDict:
    c = quickstart()
    if jax.default_backend() == "cpu":
        c.model.n_layers = 4
        for stage in (c.pretrain, c.mixed):
            stage.steps = 2000
            stage.steps_per_call = 4
    return c
