"""Where narrative knowledge lives in SmolLM2-135M: configs/cooccurrence/smollm2_cpu.py cut to
the narrative finetune and its layer-delta ablation, at every fifth k (k = 0, 5, ..., 30, both
directions) instead of every tenth, on 2 CPU cores in about 40 minutes. Only the ablation's
tasks (QA and multiple choice) are evaluated; no forgetting, no referencing.

    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_ablation_cpu.py --workdir=runs/cs_ablation
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_cpu import get_config as smollm2_cpu


def get_config() -> ConfigDict:
    c = smollm2_cpu()
    c.renderings = ("narrative",)
    c.forget.enabled = False
    c.ablation.k_step = 5
    c.eval.subsets = ("qa", "multiple_choice")
    return c
