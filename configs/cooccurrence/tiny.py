"""A miniature co-occurrence study for tests: a tiny country world and model, seconds of
training per stage, every condition and task."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "cooccurrence"
    c.seed = 0
    c.seeds = [0, 1]
    c.world = ConfigDict(
        dict(
            kind="countries",
            num_base_countries=12,
            num_novel_countries=4,
            referencing_rows_per_fact=4,
            base_referencing_rows_per_fact=2,
            vocab_size=512,
        )
    )
    c.model = ConfigDict(
        dict(preset="tiny", vocab_size=512, max_seq_len=512, n_layers=3, pos_embedding="rope")
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.base = ConfigDict(
        dict(steps=30, batch_size=8, seq_len=128, lr=3e-3, warmup_steps=3, log_every=10)
    )
    c.finetune = ConfigDict(
        dict(
            epochs=6,
            batch_size=8,
            seq_len=64,
            packing="pad",
            lr=3e-3,
            schedule="linear",
            warmup_fraction=0.1,
            end_lr_fraction=0.0,
            weight_decay=0.0,
            b2=0.999,
            eps=1e-8,
            log_every=1,
        )
    )
    c.lora_finetune = ConfigDict(dict(c.finetune.to_dict(), lr=1e-2))
    c.lora = ConfigDict(dict(rank=4, alpha=8.0, rslora=True, targets="all-linear"))
    c.renderings = ["narrative", "referencing"]
    c.modes = ["full", "lora"]
    c.forget = ConfigDict(
        dict(enabled=True, layer_fraction=1 / 3, to="pretrained", reset_optimizer="all")
    )
    c.eval = ConfigDict(dict(few_shot=2, max_new_tokens=8, batch_size=32, max_items=12))
    c.ablation = ConfigDict(dict(enabled=True, subsets=["qa", "multiple_choice"]))
    return c
