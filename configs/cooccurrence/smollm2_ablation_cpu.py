"""Where narrative knowledge lives in SmolLM2-135M: configs/cooccurrence/smollm2_cpu.py cut to
the narrative finetune and its layer-delta ablation, at every fifth k (k = 0, 5, ..., 30, both
directions) instead of every tenth, plus a window ablation (only layers k..k+4 reverted, for
k = 0, 5, ..., 25: where first/last k cannot isolate the middle of the stack). Only the
ablation's tasks (QA and multiple choice) are evaluated; no forgetting, no referencing.

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
    c.ablation.sides = ("first", "last", "window")
    c.ablation.window = 5
    c.eval.subsets = ("qa", "multiple_choice")
    return c
