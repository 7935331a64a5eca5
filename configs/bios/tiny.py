"""A miniature bioS study for tests: a few dozen people, a 2-layer model, seconds of training."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "bios"
    c.seed = 0
    c.world = ConfigDict(dict(kind="bios", num_people=40, vocab_size=512))
    c.conditions = ["single", "multi2+permute+fullname"]
    c.model = ConfigDict(
        dict(preset="tiny", vocab_size=512, max_seq_len=256, n_layers=2, d_model=128, d_ff=512)
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.pretrain = ConfigDict(
        dict(steps=20, batch_size=8, seq_len=128, lr=3e-3, warmup_steps=2, log_every=5)
    )
    c.finetune = ConfigDict(
        dict(
            steps=150,
            batch_size=16,
            seq_len=64,
            packing="pad",
            lr=3e-3,
            warmup_steps=1,
            weight_decay=0.0,
            log_every=5,
        )
    )
    c.finetune_modes = ["full", "lora"]
    c.lora = ConfigDict(dict(rank=4, alpha=8.0, targets=["q", "v"], embedding_rank=2))
    c.mixed = ConfigDict(
        dict(
            enabled=True,
            steps=20,
            batch_size=8,
            seq_len=128,
            lr=3e-3,
            warmup_steps=2,
            log_every=5,
            qa_weight=1.0,
        )
    )
    c.celebrity = False
    c.probing = ConfigDict(dict(enabled=True, steps=30, max_people=40))
    c.eval = ConfigDict(dict(max_new_tokens=12, batch_size=32))
    return c
