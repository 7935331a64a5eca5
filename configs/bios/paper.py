"""The paper-scale bioS study (Allen-Zhu & Li 2023): N = 100,000 people, GPT-2 small with
rotary positions, context 512, AdamW (0.9, 0.98, eps 1e-6), lr 1e-3, weight decay 0.1, 1,000
warmup steps, cosine decay to 0.1x, batch 96, 80k pretraining steps, bf16 compute with fp32
master weights.

One GPU:
    python -m launch.experiment --config=configs/bios/paper.py --workdir=runs/bios_paper
A TPU pod slice (flags only; see WORKSPACE.md for mesh shapes):
    bash launch/tpu_pod.sh --tpu=NAME --zone=ZONE --module=launch.experiment -- \\
        --config=configs/bios/paper.py --workdir=/tmp/bios_paper --config.mesh.data=-1 \\
        --config.mesh.fsdp=4
Shorter runs: --config.pretrain.steps=20000 etc.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "bios"
    c.seed = 0
    c.world = ConfigDict(dict(kind="bios", num_people=100_000, vocab_size=50257, num_shards=8))
    c.conditions = ["single", "multi5+permute+fullname"]
    c.model = ConfigDict(
        dict(
            preset="gpt2-small-rope",
            vocab_size=50304,
            max_seq_len=512,
            dtype="bfloat16",
            param_dtype="float32",
        )
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.pretrain = ConfigDict(
        dict(
            steps=80_000,
            batch_size=96,
            seq_len=512,
            lr=1e-3,
            warmup_steps=1000,
            schedule="cosine",
            end_lr_fraction=0.1,
            weight_decay=0.1,
            b1=0.9,
            b2=0.98,
            eps=1e-6,
            grad_clip=1.0,
            log_every=100,
            checkpoint_every=5000,
        )
    )
    # QA finetuning on P_train, the paper's recipes (§2, App. D): batch 48 x 50k steps, no
    # warmup, cosine to 10 %; full finetuning swept over lr {1e-3, 3e-4, 1e-4} x weight decay
    # {0.01, 0.001}; LoRA on query/value (rank 16) plus a rank-128 embedding update, lr 3e-4,
    # weight decay 0.01.
    c.finetune = ConfigDict(
        dict(
            steps=50_000,
            batch_size=48,
            seq_len=64,
            packing="pad",
            lr=3e-4,
            warmup_steps=0,
            schedule="cosine",
            end_lr_fraction=0.1,
            weight_decay=0.01,
            b1=0.9,
            b2=0.98,
            eps=1e-6,
            log_every=100,
            checkpoint_every=5000,
        )
    )
    c.finetune_modes = ["full", "lora"]
    c.finetune_recipes = [
        dict(name=f"full_lr{lr}_wd{wd}", mode="full", lr=lr, weight_decay=wd)
        for lr in (1e-3, 3e-4, 1e-4)
        for wd in (0.01, 0.001)
    ] + [dict(name="lora_qv16_emb128", mode="lora", lr=3e-4, weight_decay=0.01)]
    c.lora = ConfigDict(dict(rank=16, alpha=32.0, targets=["q", "v"], embedding_rank=128))
    # Mixed training: QA_r = 0.8, read as the share of QA documents in the mixture (4 QA
    # documents drawn per biography).
    c.mixed = ConfigDict(
        dict(
            enabled=True,
            steps=80_000,
            batch_size=96,
            seq_len=512,
            lr=1e-3,
            warmup_steps=1000,
            weight_decay=0.1,
            b2=0.98,
            eps=1e-6,
            log_every=100,
            checkpoint_every=5000,
            qa_weight=4.0,
        )
    )
    c.celebrity = True
    c.probing = ConfigDict(dict(enabled=True, steps=1000, max_people=20_000))
    c.eval = ConfigDict(dict(max_new_tokens=24, batch_size=256, max_people=2000))
    return c
