"""A quick co-occurrence study for a CPU (minutes): a small country world, a 4-layer base
model pretrained on the base world, three seeds of full finetuning on the narrative and the
referencing corpus, with and without active forgetting, every evaluation task, likelihood
ratios and the layer-delta ablation (about 21 minutes on 2 CPU cores). The finetune is longer
and its learning rate higher than the authors' (5 epochs at 1.5e-5 for 8B models; see
configs/cooccurrence/paper.py): with 5 epochs at 1e-3 this 4-layer model does not learn the
novel facts at all (WORKSPACE.md, "co-occurrence quick")."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "cooccurrence"
    c.seed = 0
    c.seeds = [0, 1, 2]
    c.world = ConfigDict(dict(kind="countries", num_base_countries=60, num_novel_countries=6,
                              referencing_rows_per_fact=16, base_referencing_rows_per_fact=6,
                              vocab_size=2048))
    c.model = ConfigDict(dict(preset="tiny", pos_embedding="rope", vocab_size=2048,
                              d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=512))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.base = ConfigDict(dict(steps=600, batch_size=32, seq_len=128, lr=3e-3, warmup_steps=30,
                             weight_decay=0.1, log_every=50))
    c.finetune = ConfigDict(dict(epochs=15, batch_size=16, seq_len=128, packing="pad", lr=3e-3,
                                 schedule="linear", warmup_fraction=0.1, end_lr_fraction=0.0,
                                 weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0,
                                 log_every=1))
    c.lora_finetune = ConfigDict(dict(epochs=10, batch_size=16, seq_len=128, packing="pad",
                                      lr=3e-3, schedule="linear", warmup_fraction=0.1,
                                      end_lr_fraction=0.0, weight_decay=0.0, b1=0.9,
                                      b2=0.999, eps=1e-8, grad_clip=1.0, log_every=1))
    c.lora = ConfigDict(dict(rank=16, alpha=16.0, rslora=True,
                             targets=["q", "k", "v", "o", "up", "down"]))
    c.renderings = ["narrative", "referencing"]
    c.modes = ["full"]
    c.forget = ConfigDict(dict(enabled=True, layer_fraction=1 / 3, to="pretrained",
                               reset_optimizer="all"))
    c.eval = ConfigDict(dict(few_shot=5, max_new_tokens=16, batch_size=64, max_items=60))
    c.ablation = ConfigDict(dict(enabled=True, subsets=["qa", "multiple_choice"]))
    return c
