"""Quickstart: a small bioS study that runs on a 2-core CPU in about three minutes.

bioS single versus multi5x10+permute+fullname (5 biographies per person, drawn 10 times
independently: 50 renderings per person in other templates and sentence orders, the 10 draws
fixed and shuffled together, each rendering seen ~2-3 times; the paper's
multi5+permute+fullname is 5 renderings, no re-draws), each pretrained on biographies for the
same number of tokens, then QA-finetuned on P_train (LoRA on query/value plus a low-rank update
of the input embedding, the paper's best finetune); exact match of greedy answers on P_test
shows whether the knowledge became extractable. report.md also gives how well each model
memorised its biographies before the finetune and P-/Q-probing per layer. On a GPU the same
command uses a bigger default (more people, a bigger model, more steps). Override anything
with --config.SECTION.FIELD=... (docs/lab_notebook.md records why each value is what it is).
"""

import jax
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    gpu = jax.default_backend() != "cpu"
    c = ConfigDict()
    c.experiment = "bios"
    c.seed = 0
    # Small attribute pools so that 200 people give each probe class ~10 examples; name pools
    # and a 2,048-token BPE that make every name part and value one token, so a biography
    # (61-97 tokens) fits a 256-token row whole (first-fit packing never cuts one).
    pools = (
        {}
        if gpu
        else dict(
            num_cities=20,
            num_universities=20,
            num_majors=20,
            num_companies=20,
            birth_year_min=1960,
            birth_year_max=1999,
            num_first_names=100,
            num_middle_names=100,
            num_last_names=100,
        )
    )
    c.world = ConfigDict(
        dict(
            kind="bios",
            num_people=4000 if gpu else 200,
            vocab_size=4096 if gpu else 2048,
            redraws=10,  # the "x10" of multi5x10+permute+fullname
            **pools,
        )
    )
    c.conditions = ["single", "multi5x10+permute+fullname"]
    c.model = ConfigDict(
        dict(
            preset="tiny",
            pos_embedding="rope",
            vocab_size=4096 if gpu else 2048,
            d_model=384 if gpu else 128,
            # 2 layers: 1,000 steps give 89.5 % held-out extraction where 4 layers give 76.5 %,
            # in 0.55x the time per step (docs/lab_notebook.md E27).
            n_layers=6 if gpu else 2,
            n_heads=6 if gpu else 4,
            d_ff=1536 if gpu else 512,
            max_seq_len=512,
            dtype="bfloat16" if gpu else "float32",
        )
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Many small steps: 8 x 256 tokens x 700 steps beat 16 x 256 x 400 at the same wall time
    # (73 % vs 31 % held-out extraction on the same draw), and 4 x 256 x 1400 beat 8 x 700
    # (83 % vs 73 %; 2 x 2800: 74 %) for the same tokens; 2000 steps of 4 x 256 then reached
    # 90 % with 4 layers (docs/lab_notebook.md E4-E5, E14, E20), 1000 steps with 2 layers 89.5 %
    # in a third of the time (E27).
    c.pretrain = ConfigDict(
        dict(
            steps=4000 if gpu else 1000,
            batch_size=64 if gpu else 4,
            seq_len=256,
            packing="first_fit",
            lr=3e-3 if gpu else 4e-3,
            warmup_steps=100 if gpu else 20,
            end_lr_fraction=0.1,
            weight_decay=0.1,
            log_every=25,
            # 16 optimizer steps per jitted call: the same parameters bit for bit, ~1.3-1.5x the
            # tokens/s of one step per call at this batch on 2 cores (notebook P4, E26, E27).
            steps_per_call=16,
            # Learning curves: P_train / P_test QA and memorisation of 50 people every 250
            # steps (~5 % of the stage's time, E26).
            eval_every=250,
        )
    )
    c.finetune = ConfigDict(
        dict(
            steps=600 if gpu else 150,
            batch_size=64 if gpu else 32,
            seq_len=64,
            packing="pad",
            lr=1e-3,
            warmup_steps=10,
            weight_decay=0.0,
            log_every=25,
            steps_per_call=4,
            eval_every=25,
        )
    )
    c.finetune_modes = ["lora"]
    c.lora = ConfigDict(dict(rank=16, alpha=32.0, targets=["q", "v"], embedding_rank=128))
    c.mixed = ConfigDict(
        dict(
            enabled=False,
            # 4 P_train QA documents per biography: the paper's QA share of 0.8 (Result 1).
            qa_weight=4.0,
            **{
                k: c.pretrain[k]
                for k in (
                    "steps",
                    "batch_size",
                    "seq_len",
                    "packing",
                    "lr",
                    "warmup_steps",
                    "end_lr_fraction",
                    "weight_decay",
                    "log_every",
                    "steps_per_call",
                    "eval_every",
                )
            },
        )
    )
    c.celebrity = False
    c.probing = ConfigDict(dict(enabled=True, steps=200, max_people=4000 if gpu else 200))
    c.eval = ConfigDict(dict(max_new_tokens=20, batch_size=128, max_people=500 if gpu else 100))
    return c
