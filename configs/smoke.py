"""Smoke run: a tiny GPT-2-shaped model on a tiny generated corpus, float32, CPU in seconds."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.model = ConfigDict(dict(preset="tiny", vocab_size=512, max_seq_len=64, dtype="float32"))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optim = ConfigDict(dict(lr=3e-3, schedule="cosine", warmup_steps=10, weight_decay=0.1,
                              grad_clip=1.0, b1=0.9, b2=0.98, eps=1e-6))
    c.train = ConfigDict(dict(steps=60, log_every=5, checkpoint_every=20, keep_checkpoints=2,
                              grad_accum=1))
    c.data = ConfigDict(dict(
        seq_len=64, batch_size=16, packing="concat",
        sources=[dict(name="synthetic", weight=1.0)],
        world=dict(kind="synthetic", num_docs=2000, vocab_size=512),
    ))
    return c
