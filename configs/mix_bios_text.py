"""A real corpus beside a synthetic world in one run: bioS biographies (+ QA of the training
people) mixed by weight with your own text, one shared tokenizer (a BPE trained on a sample
of the text), per-source token counts in metrics.jsonl (``source_tokens/NAME``).

    python -m launch.train --config=configs/mix_bios_text.py:'my_corpus/*.jsonl.gz' \\
        --workdir=runs/mix

The paths/globs (comma-separated) may be JSONL, plain text or Parquet, optionally .gz/.zst;
`--config.data.sources` weights set the mixture; world options are reached as e.g.
`--config.data.world.worlds.bios.num_people=200`.
"""

from ml_collections import ConfigDict

from jaxknow.config import base_config


def get_config(paths: str = "corpus/*.jsonl") -> ConfigDict:
    c = base_config()
    c.model.preset = "tiny"
    c.model.update(
        dict(
            d_model=128,
            d_ff=512,
            n_layers=4,
            n_heads=4,
            vocab_size=4096,
            max_seq_len=256,
            dtype="float32",
        )
    )
    c.optim.update(
        dict(lr=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.1, grad_clip=1.0)
    )
    c.train.update(dict(steps=400, log_every=10, checkpoint_every=100, keep_checkpoints=2))
    c.data.update(
        dict(
            seq_len=256,
            batch_size=32,
            packing="concat",
            sources=[
                dict(name="bios_single", weight=2.0),
                dict(name="qa_train", weight=1.0),
                dict(name="text", weight=1.0),
            ],
        )
    )
    # The text world's tokenizer (a BPE of a sample of the text) is shared with bioS.
    c.data.world = ConfigDict(
        dict(
            kind="mix",
            tokenizer_from="text",
            worlds=dict(
                text=dict(
                    kind="jsonl",
                    paths=[p for p in paths.split(",") if p],
                    source="text",
                    vocab_size=4096,
                    tokenizer_sample=50_000,
                    workers=2,
                ),
                bios=dict(kind="bios", num_people=1000, augmentations=["single"]),
            ),
        )
    )
    return c
