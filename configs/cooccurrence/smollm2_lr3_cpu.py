"""The CPU co-occurrence study on SmolLM2-135M at lr 3e-4: configs/cooccurrence/smollm2_cpu.py
(narrative, narrative + forgetting, referencing once over its corpus) with full finetuning at
3e-4 instead of the authors' 1.5e-5 (lab notebook S2, S3, S7: 1.5e-5 teaches this model
nothing, 1e-4 reaches narrative QA 47.5 %, 3e-4 80 %), and the layer-delta ablation of the
narrative model at k = 0, 10, 20, 30 plus windows of ten layers (0-9, 10-19, 20-29). About
50 minutes on 2 CPU cores (S7, S8).

    python -m launch.get_model smollm2-135m
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_lr3_cpu.py --workdir=runs/cs_lr3
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_cpu import get_config as smollm2_cpu


def get_config() -> ConfigDict:
    c = smollm2_cpu()
    c.finetune.lr = 3e-4
    c.ablation.renderings = ("narrative",)
    c.ablation.sides = ("first", "last", "window")
    c.ablation.window = 10
    return c
