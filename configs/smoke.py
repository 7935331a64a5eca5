"""Smoke run: a tiny GPT-2-shaped model on a tiny bioS world (biographies plus QA of the
training people), float32, on a CPU in well under a minute."""

from ml_collections import ConfigDict

from jaxknow.config import base_config


def get_config() -> ConfigDict:
    c = base_config()
    c.model.preset = "tiny"
    c.model.vocab_size = 1024
    c.model.max_seq_len = 128
    c.model.dtype = "float32"
    c.optim.update(
        dict(
            lr=3e-3,
            schedule="cosine",
            warmup_steps=10,
            weight_decay=0.1,
            grad_clip=1.0,
            b1=0.9,
            b2=0.98,
            eps=1e-6,
        )
    )
    c.train.update(dict(steps=60, log_every=5, checkpoint_every=20, keep_checkpoints=2))
    c.data.update(
        dict(
            seq_len=128,
            batch_size=16,
            packing="concat",
            sources=[dict(name="bios_single", weight=3.0), dict(name="qa_train", weight=1.0)],
        )
    )
    c.data.world = ConfigDict(
        dict(kind="bios", num_people=200, augmentations=["single"], vocab_size=1024)
    )
    return c
