"""Narrative text and active forgetting on SmolLM2-135M at lr 3e-4: configs/cooccurrence/
smollm2_cpu.py cut to the narrative conditions (no referencing), full finetuning at 3e-4
instead of 1e-4 (lab notebook S7: 1.5e-5 teaches this model nothing, 1e-4 reaches QA 47.5 %,
3e-4 80 %), and the layer-delta ablation of the narrative model at k = 0, 10, 20, 30 plus
windows of ten layers (0-9, 10-19, 20-29). About 31 minutes on 2 CPU cores.

    python -m launch.get_model smollm2-135m
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_narrative_cpu.py --workdir=runs/cs_narrative
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_cpu import get_config as smollm2_cpu


def get_config() -> ConfigDict:
    c = smollm2_cpu()
    c.finetune.lr = 3e-4
    c.renderings = ("narrative",)
    c.ablation.renderings = ("narrative",)
    c.ablation.sides = ("first", "last", "window")
    c.ablation.window = 10
    return c
