"""configs/cooccurrence/smollm2_lr3_cpu.py without the referencing condition: narrative text and
active forgetting on SmolLM2-135M at lr 3e-4, and the narrative model's layer-delta ablation
(k = 0, 10, 20, 30 and windows of ten layers). About 31 minutes on 2 CPU cores (lab notebook S7).

    python -m launch.get_model smollm2-135m
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_narrative_cpu.py --workdir=runs/cs_narrative
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_lr3_cpu import get_config as smollm2_lr3_cpu


def get_config() -> ConfigDict:
    c = smollm2_lr3_cpu()
    c.renderings = ("narrative",)
    return c
