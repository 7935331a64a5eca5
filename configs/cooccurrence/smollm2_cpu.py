"""configs/cooccurrence/smollm2.py cut to what 2 CPU cores finish in about two hours (the
paper's shape takes several: referencing training alone is 600 steps of 16 x 56 tokens).
Every difference from the paper's shape is here:

- referencing: the whole 1,920-row corpus, but one pass instead of five (120 steps, about the
  115 of narrative's five passes over 360 rows; each fact is read in 48 referencing passages
  vs 9 x 5 = 45 narrative sentences);
- the layer-delta ablation of the narrative model only, at k = 0, 10, 20, 30 instead of every k.

    python -m launch.experiment --config=configs/cooccurrence/smollm2_cpu.py --workdir=runs/cs
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2 import get_config as smollm2


def get_config() -> ConfigDict:
    c = smollm2()
    c.epochs_per_rendering = ConfigDict(dict(referencing=1.0))
    c.ablation.k_step = 10
    c.ablation.renderings = ("narrative",)
    return c
