"""LoRA fine-tuning of a converted Hugging Face model on the country world's narrative corpus,
with the co-occurrence paper's hyperparameters: rank 64, alpha 16, rank-stabilised scaling,
adapters on q, k, v, o, gate, up and down, 10 epochs at lr 1e-4; the rest as in
`configs/hf/finetune_full.py` (read its docstring for the ':/path/to/converted' argument).

    python -m launch.train --config=configs/hf/finetune_lora.py:/path/to/converted \
        --workdir=/path/to/run
"""

from __future__ import annotations

from ml_collections import ConfigDict

from configs.hf.finetune_full import finetune_config
from jaxknow.model.lora import all_linear_targets


def get_config(converted: str | None = None) -> ConfigDict:
    """Returns the LoRA fine-tuning config (`converted`: the converted model's directory)."""
    c = finetune_config(converted or None, epochs=10, lr=1e-4)
    targets = list(all_linear_targets(c.model.mlp))  # GPT-2 blocks have no gate projection
    c.lora.update(dict(rank=64, alpha=16.0, rslora=True, targets=targets))
    c.train.trainable = "lora"
    return c
