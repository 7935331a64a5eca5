"""Full fine-tuning of a converted Hugging Face model on the country world's narrative corpus,
with the co-occurrence paper's hyperparameters (batch 16, 5 epochs, lr 1.5e-5 with a linear
schedule and 10 % warmup, clip 1.0, AdamW 0.9/0.999/1e-8 without weight decay, bf16 compute,
one example per sequence, at most 1024 tokens).

    python -m launch.convert --from=hf --src=/path/to/hf_model --dst=/path/to/converted
    python -m launch.train --config=configs/hf/finetune_full.py:/path/to/converted \
        --workdir=/path/to/run

The argument after ':' is the converted directory: it becomes `train.init_from`, the world's
tokenizer (`data.world.tokenizer`), and the source of the whole `model` section, which must
match the checkpoint (jaxknow.train.setup.initial_params checks it). Without the argument these
are placeholders: then set `--config.train.init_from`, `--config.data.world.tokenizer` and every
`--config.model.*` field by hand (`jaxknow.io.load.model_section(DIR)` lists them).

`train.steps` assumes the paper-size world (360 narrative examples); for another world set
`--config.train.steps=ceil(examples * epochs / 16)` and `--config.optim.warmup_steps` to a
tenth of it. `data.num_epochs` ends the data after the paper's number of epochs either way.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from jaxknow.config import base_config

PLACEHOLDER = "/path/to/converted"  # must be overridden (see the module docstring)
# 20 novel countries x 2 relations (capital, animal) x 9 narrative rows per fact.
NARRATIVE_EXAMPLES = 360
BATCH_SIZE = 16
MAX_TOKENS = 1024


def finetune_config(converted: str | None, epochs: int, lr: float) -> ConfigDict:
    """Returns the fine-tuning config shared by the full and LoRA variants."""
    c = base_config()
    model = {}
    if converted:
        from jaxknow.io.load import model_section

        model = model_section(converted)
        c.model.update(model)
    else:  # GPT-2's context; only shapes learned positions, so rotary models are unaffected
        c.model.max_seq_len = MAX_TOKENS
    c.model.preset = None
    c.model.dtype = "bfloat16"  # compute; parameters (and AdamW's master copy) stay float32
    c.model.param_dtype = "float32"
    seq_len = MAX_TOKENS
    if model.get("pos_embedding") == "learned":
        seq_len = min(seq_len, model["max_seq_len"])

    steps = math.ceil(NARRATIVE_EXAMPLES * epochs / BATCH_SIZE)
    c.train.update(
        dict(
            init_from=converted or PLACEHOLDER,
            steps=steps,
            log_every=10,
            checkpoint_every=0,
            keep_checkpoints=1,
        )
    )
    c.optim.update(
        dict(
            lr=lr,
            schedule="linear",
            warmup_steps=max(1, steps // 10),
            end_lr_fraction=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip=1.0,
        )
    )
    c.data.update(
        dict(
            seq_len=seq_len,
            batch_size=BATCH_SIZE,
            packing="pad",
            num_epochs=epochs,
            sources=[dict(name="corpus_narrative")],
        )
    )
    c.data.world = ConfigDict(dict(kind="countries", tokenizer=converted or PLACEHOLDER))
    return c


def get_config(converted: str | None = None) -> ConfigDict:
    """Returns the full fine-tuning config (`converted`: the converted model's directory)."""
    return finetune_config(converted or None, epochs=5, lr=1.5e-5)
