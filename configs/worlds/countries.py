"""The fictional country world of the co-occurrence experiments (capital, national animal,
language). `--config=configs/worlds/countries.py:tiny` gives a test-sized world; the default's
novel split has the paper's size (20 countries)."""

from ml_collections import ConfigDict

from configs.presets import pick

PRESETS = {
    "paper": dict(num_base_countries=200, num_novel_countries=20, vocab_size=8192),
    "tiny": dict(num_base_countries=20, num_novel_countries=4, vocab_size=1024),
}


def get_config(preset: str = "paper") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.world = ConfigDict(dict(kind="countries", **pick(PRESETS, preset)))
    return c
