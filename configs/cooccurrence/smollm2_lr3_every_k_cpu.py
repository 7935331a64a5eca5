"""configs/cooccurrence/smollm2_lr3_cpu.py with the layer-delta ablation of the narrative model
at every k (first and last k layers reverted, k = 0..30) and every window of five layers
(layers a..a+4 reverted, a = 0..25), evaluated with shared layer prefixes (issue 26 item 5,
issue 28 target 2). In S7/S8's workdir every condition and evaluation is cached, so only the
ablation runs (lab notebook S13).

    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_lr3_every_k_cpu.py --workdir=runs/cs_lr3
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_lr3_cpu import get_config as smollm2_lr3_cpu


def get_config() -> ConfigDict:
    c = smollm2_lr3_cpu()
    c.ablation.k_step = 1
    c.ablation.window = 5
    return c
