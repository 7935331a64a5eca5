"""The bioS world (Allen-Zhu & Li, Physics of LMs 3.1). `--config=configs/worlds/bios.py:tiny`
gives a test-sized world; the default is the paper's N = 100,000."""

from ml_collections import ConfigDict

from configs.presets import pick

PRESETS = {
    "paper": dict(
        num_people=100_000,
        augmentations=["single", "multi5+permute+fullname"],
        vocab_size=8192,
        num_shards=4,
    ),
    "small": dict(
        num_people=4000, augmentations=["single", "multi5+permute+fullname"], vocab_size=4096
    ),
    "tiny": dict(
        num_people=200, augmentations=["single", "multi2+permute+fullname"], vocab_size=1024
    ),
}


def get_config(preset: str = "paper") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.world = ConfigDict(dict(kind="bios", **pick(PRESETS, preset)))
    return c
