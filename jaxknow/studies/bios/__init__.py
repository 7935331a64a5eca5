"""The bioS study (Allen-Zhu & Li, Physics of LMs 3.1): synthetic biographies, QA
finetuning, extraction on held-out people, probing.

- `world`, `templates`, `data/`: the population, 50 templates per attribute, augmentations,
  QA, the train / test split; pools of universities, majors, companies
- `leakage`: the guard that refuses a P_test question in a training source
- `corpus`: the world kind ``bios`` (a world description → a data directory)
- `probing`: P- / Q-probes on top of `jaxknow.eval.probing`
- `study`: the study runner (experiment ``bios``); `sweep`: curves of studies over one knob

Importing this package registers the world kind and the experiment (light: the runner is
imported when an experiment runs).
"""

from jaxknow.data.world_builders import register_world_kind
from jaxknow.experiments.registry import register_experiment
from jaxknow.studies.bios.corpus import bios_options, build_bios

register_world_kind("bios", build=build_bios, check=bios_options)
register_experiment("bios", "jaxknow.studies.bios.study:run_bios_study")
