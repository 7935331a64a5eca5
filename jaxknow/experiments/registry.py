"""The experiments `launch.experiment` can run, by the name a config's ``experiment`` field gives.

A study registers its runner with `register_experiment` when its package is imported
(`jaxknow.studies` imports every built-in study). A runner is called as
``runner(config, workdir)`` and writes ``WORKDIR/results.json`` and ``WORKDIR/report.md``. It
may be registered as a reference ``"package.module:function"``, imported on first use, so that
registering a study does not import its whole runner (JAX, the trainer, evaluation).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxknow.config import ConfigError

Runner = Callable[[Any, str | Path], Any]

EXPERIMENTS: dict[str, Runner | str] = {}


def register_experiment(name: str, runner: Runner | str) -> None:
    """Registers `runner` (a callable or a ``"module:function"`` reference) as the experiment
    `name`. Registering the same runner again is a no-op; raises ValueError when `name` is
    already another runner or a reference is not of the form ``module:function``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"an experiment needs a non-empty name, got {name!r}")
    if isinstance(runner, str) and runner.count(":") != 1:
        raise ValueError(f"experiment {name!r}: runner {runner!r} is not 'module:function'")
    old = EXPERIMENTS.get(name)
    if old is not None and _reference(old) != _reference(runner):
        raise ValueError(
            f"experiment {name!r} is already registered ({_reference(old)}), "
            f"not {_reference(runner)}"
        )
    EXPERIMENTS[name] = runner


def _reference(runner: Runner | str) -> str:
    if isinstance(runner, str):
        return runner
    return f"{runner.__module__}:{runner.__qualname__}"


def known_experiments() -> list[str]:
    """Returns the names of every registered experiment, sorted."""
    return sorted(EXPERIMENTS)


def experiment_runner(name: Any) -> Runner:
    """Returns the runner of experiment `name` (importing a ``module:function`` reference);
    raises ConfigError naming the field and the known experiments when there is none."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment={name!r}: must be one of {known_experiments()}")
    runner = EXPERIMENTS[name]
    if isinstance(runner, str):
        module, fn = runner.split(":")
        runner = getattr(importlib.import_module(module), fn)
    return runner
