"""The studies built on the engine, one package each: its world, templates, corpus building
(world kinds), probing / report and study runner.

Importing this package registers every built-in study: each study package, when imported,
registers its world kinds (`jaxknow.data.world_builders.register_world_kind`) and its
experiment (`jaxknow.experiments.registry.register_experiment`). The entry points import it
(`launch.common`), so ``data.world.kind="bios"`` and ``experiment="cooccurrence"`` work from
any command; library code that materialises a study's world by kind imports it first. The
engine (model, parallel, train, data, io, eval, experiments) imports no study
(`tests/test_architecture.py`).

Adding a study: a package ``jaxknow/studies/NAME/`` whose ``__init__`` registers its kinds and
runner, its name in the import below, and a configs folder ``configs/NAME/``.
"""

from jaxknow.studies import bios, cooccurrence

BUILT_IN = (bios, cooccurrence)
