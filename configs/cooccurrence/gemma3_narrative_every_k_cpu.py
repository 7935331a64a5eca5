"""configs/cooccurrence/gemma3_narrative_cpu.py with the narrative model's layer-delta ablation at
every k, first and last k of the 18 layers reverted (35 models, QA and MC), evaluated with
shared layer prefixes. In S11's workdir every condition and evaluation is cached, so only the
ablation runs (lab notebook S14).

    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/gemma3_narrative_every_k_cpu.py --workdir=runs/cg_narrative
"""

from ml_collections import ConfigDict

from configs.cooccurrence.gemma3_narrative_cpu import get_config as gemma3_narrative_cpu


def get_config() -> ConfigDict:
    c = gemma3_narrative_cpu()
    c.ablation.sides = ("first", "last")
    c.ablation.k_step = 1
    return c
