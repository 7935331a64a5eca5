"""The co-occurrence study at the paper's corpus size on one GPU: the country world with 20
novel countries (capital, national animal, language), a 12-layer base model pretrained on the
base world, the authors' finetuning hyperparameters, three seeds, full finetuning and LoRA,
active forgetting of layers >= L/3.

    python -m launch.experiment --config=configs/cooccurrence/paper.py --workdir=runs/cooc

With an imported model instead of the self-pretrained base (e.g. Llama 3 8B converted with
launch.convert), add --config.base.init_from=/path/to/converted.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "cooccurrence"
    c.seed = 0
    c.seeds = [0, 1, 2]
    c.world = ConfigDict(
        dict(kind="countries", num_base_countries=400, num_novel_countries=20, vocab_size=8192)
    )
    c.model = ConfigDict(
        dict(preset="gpt2-small-rope", vocab_size=8192, max_seq_len=1024, dtype="bfloat16")
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.base = ConfigDict(
        dict(
            steps=20_000,
            batch_size=64,
            seq_len=512,
            lr=6e-4,
            warmup_steps=500,
            weight_decay=0.1,
            log_every=100,
            checkpoint_every=5000,
        )
    )
    # The authors' full finetune: batch 16, 5 epochs, lr 1.5e-5, linear, 10 % warmup, clip 1,
    # AdamW (0.9, 0.999, 1e-8), no weight decay, one example per sequence.
    c.finetune = ConfigDict(
        dict(
            epochs=5,
            batch_size=16,
            seq_len=1024,
            packing="pad",
            lr=1.5e-5,
            schedule="linear",
            warmup_fraction=0.1,
            end_lr_fraction=0.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=1.0,
            log_every=1,
        )
    )
    # LoRA: rank 64, alpha 16, rank-stabilised, all projections, 10 epochs, lr 1e-4.
    c.lora_finetune = ConfigDict(dict(c.finetune.to_dict(), epochs=10, lr=1e-4))
    c.lora = ConfigDict(dict(rank=64, alpha=16.0, rslora=True, targets="all-linear"))
    c.renderings = ["narrative", "referencing"]
    c.modes = ["full", "lora"]
    c.forget = ConfigDict(
        dict(enabled=True, layer_fraction=1 / 3, to="pretrained", reset_optimizer="all")
    )
    c.eval = ConfigDict(dict(few_shot=5, max_new_tokens=50, batch_size=64, max_items=400))
    c.ablation = ConfigDict(dict(enabled=True, subsets=["qa", "multiple_choice"]))
    return c
