"""A quick co-occurrence study for a CPU: narrative versus referencing text, active forgetting,
likelihood probes and the layer-delta ablation, on 102 novel facts, three seeds (about 13
minutes on 2 CPU cores; docs/lab_notebook.md, entries C1-C13, tells how this design was found).

The paper's effects are for 8B models that bring their own skills; a from-scratch 4-layer
model does not, so the miniature is designed rather than shrunk (Physics of LMs 3.1's lessons):
- the base model is pretrained on a base world: 100 countries in narrative and referencing
  text, animal commonsense, negated statements and worked examples of every evaluation format;
- the novel facts are learned in a continued *mixed* training: the novel corpus (narrative or
  referencing) beside replayed base-world text and QA (`replay`), never in a finetune that
  overwrites the formats (the earlier design lost the base model's own abilities: animal
  commonsense 44 % -> 0 %);
- both renderings get the same number of steps; forgetting (reset of the upper two thirds of the
  layers after pass 1, then pass 2 with a fresh optimizer) runs on narrative text, as in the
  paper's Table 4;
- the negation probe is also read in a held-out frame ("According to the old records: ...")
  that only the base world's text uses.

    python -m launch.experiment --config=configs/cooccurrence/quick.py --workdir=runs/cq
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "cooccurrence"
    c.seed = 0
    c.seeds = [0, 1, 2]
    c.world = ConfigDict(
        dict(
            kind="countries",
            num_base_countries=50,
            num_novel_countries=34,
            referencing_rows_per_fact=16,
            base_referencing_rows_per_fact=9,
            base_renderings="split",
            vocab_size=2048,
        )
    )
    c.model = ConfigDict(
        dict(
            preset="tiny",
            pos_embedding="rope",
            vocab_size=2048,
            d_model=128,
            n_layers=4,
            n_heads=4,
            d_ff=512,
            max_seq_len=512,
        )
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.base = ConfigDict(
        dict(
            steps=500,
            batch_size=16,
            seq_len=256,
            packing="first_fit",
            lr=3e-3,
            warmup_steps=30,
            weight_decay=0.1,
            log_every=50,
        )
    )
    # Many small steps (2 x 256 tokens x 600): the same tokens as 8 x 150, narrative QA 28 -> 50 %
    # on seed 0 (lab notebook C12).
    c.finetune = ConfigDict(
        dict(
            steps=600,
            batch_size=2,
            seq_len=256,
            packing="first_fit",
            lr=3e-3,
            schedule="linear",
            warmup_fraction=0.1,
            end_lr_fraction=0.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=1.0,
            log_every=50,
        )
    )
    c.lora_finetune = ConfigDict(c.finetune.to_dict())  # LoRA runs: the same schedule
    c.lora = ConfigDict(dict(rank=16, alpha=16.0, rslora=True, targets="all-linear"))
    # Replay 1:1 (was 0.5): keeps the base model's own abilities after referencing training too
    # (base QA 75 -> 75 instead of 50 on seed 0) and lifts narrative QA (lab notebook C14).
    c.replay = ConfigDict(dict(weight=1.0, source="corpus_pretrain"))
    c.renderings = ["narrative", "referencing"]
    c.modes = ["full"]
    c.forget = ConfigDict(
        dict(
            enabled=True,
            layer_fraction=1 / 3,
            to="pretrained",
            reset_optimizer="all",
            renderings=["narrative"],
        )
    )
    c.eval = ConfigDict(
        dict(
            few_shot=5,
            max_new_tokens=8,
            batch_size=64,
            max_items=102,
            base_max_items=20,
            eval_pass1=False,
        )
    )
    c.ablation = ConfigDict(dict(enabled=True, subsets=["qa", "multiple_choice"], all_seeds=False))
    return c
