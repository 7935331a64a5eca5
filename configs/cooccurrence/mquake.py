"""The co-occurrence conditions on an MQuAKE file (real temporal knowledge updates), from an
imported model: original (the dataset's own statements) versus referencing rendering,
single-hop and multi-hop accuracy.

    python -m launch.convert --from=hf --src=/models/Meta-Llama-3-8B --dst=/models/llama3-8b
    python -m launch.experiment --config=configs/cooccurrence/mquake.py --workdir=runs/mq \\
        --config.world.path=/data/MQuAKE-T.json --config.base.init_from=/models/llama3-8b
"""

from ml_collections import ConfigDict

from configs.cooccurrence.paper import get_config as paper


def get_config() -> ConfigDict:
    c = paper()
    c.world = ConfigDict(
        dict(kind="mquake", path="/path/to/MQuAKE-T.json", referencing_rows_per_fact=8)
    )
    c.base = ConfigDict(dict(init_from="/path/to/converted-model"))
    c.renderings = ["original", "referencing"]
    c.ablation = ConfigDict(dict(enabled=False))
    c.eval = ConfigDict(dict(few_shot=5, max_new_tokens=30, batch_size=16))
    return c
