"""configs/cooccurrence/smollm2_narrative_cpu.py on Gemma 3 270M (18 layers, d640, vocabulary
262k): narrative text and active forgetting of the upper two thirds (layers >= 6) with full
finetuning at SmolLM2's lr 3e-4 (not tuned for this model: lab notebook S11), and the
narrative model's layer-delta ablation in windows of six layers (0-5, 6-11, 12-17) only, QA
and MC: at twice SmolLM2's cost per token a window costs ~3 minutes. About an hour on 2 CPU
cores.

    python -m launch.get_model gemma3-270m
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/gemma3_narrative_cpu.py --workdir=runs/cg_narrative
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_narrative_cpu import get_config as smollm2_narrative_cpu


def get_config() -> ConfigDict:
    c = smollm2_narrative_cpu()
    c.base.init_from = "gguf:gemma3-270m"
    c.ablation.sides = ("window",)
    c.ablation.k_step = 6
    c.ablation.window = 6
    return c
