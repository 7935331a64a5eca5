"""Quickstart: a small bioS study that runs on a 2-core CPU in about ten minutes.

bioS single versus multi5+permute+fullname, each pretrained on biographies for the same
number of steps, then QA-finetuned on P_train; exact match of greedy answers on P_test shows
whether the knowledge became extractable. On a GPU the same command uses a bigger default
(more people, a bigger model, more steps). Override anything with --config.SECTION.FIELD=...
"""

import jax
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    gpu = jax.default_backend() != "cpu"
    c = ConfigDict()
    c.experiment = "bios"
    c.seed = 0
    # Small attribute pools on CPU so that 200 people give each probe class ~10 examples.
    pools = {} if gpu else dict(num_cities=20, num_universities=20, num_majors=20,
                                num_companies=20, birth_year_min=1960, birth_year_max=1999)
    c.world = ConfigDict(dict(kind="bios", num_people=4000 if gpu else 200,
                              vocab_size=4096 if gpu else 1024, **pools))
    c.conditions = ["single", "multi5+permute+fullname"]
    c.model = ConfigDict(dict(
        preset="tiny", pos_embedding="rope", vocab_size=4096 if gpu else 1024,
        d_model=384 if gpu else 128, n_layers=6 if gpu else 4, n_heads=6 if gpu else 4,
        d_ff=1536 if gpu else 512, max_seq_len=512, dtype="bfloat16" if gpu else "float32"))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.pretrain = ConfigDict(dict(
        steps=4000 if gpu else 400, batch_size=64 if gpu else 32, seq_len=256 if gpu else 128,
        lr=3e-3 if gpu else 6e-3,
        warmup_steps=100 if gpu else 20, end_lr_fraction=0.1, weight_decay=0.1, log_every=25))
    c.finetune = ConfigDict(dict(
        steps=600 if gpu else 150, batch_size=64 if gpu else 32, seq_len=64, packing="pad",
        lr=1e-3,
        warmup_steps=10, weight_decay=0.0, log_every=25))
    c.finetune_modes = ["full"]
    c.lora = ConfigDict(dict(rank=16, alpha=32.0, targets=["q", "v"], embedding_rank=16))
    # Mixed training (biographies + P_train QA from scratch): off by default to keep the
    # quickstart short; --config.mixed.enabled=True adds it with the pretraining budget.
    c.mixed = ConfigDict(dict(enabled=False, qa_weight=1.0, **{
        k: c.pretrain[k] for k in ("steps", "batch_size", "seq_len", "lr", "warmup_steps",
                                   "end_lr_fraction", "weight_decay", "log_every")}))
    c.celebrity = False
    c.probing = ConfigDict(dict(enabled=True, steps=200, max_people=4000 if gpu else 200))
    c.eval = ConfigDict(dict(max_new_tokens=20, batch_size=128, max_people=500 if gpu else 100))
    return c
