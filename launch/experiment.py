"""Run a whole study: ``python -m launch.experiment --config=configs/EXPERIMENT.py
--workdir=DIR``. Writes DIR/results.json, DIR/report.md and DIR/plots/*.png and prints the
report. Every stage is a resumable training run: a second call continues where it stopped.
SIGTERM or Ctrl-C saves the running stage and stops the study (exit 143 or 130)."""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from launch.common import EXIT_INTERRUPTED, resolve_named_models, run_app, run_main

EXIT_TERMINATED = 143  # 128 + SIGTERM

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config (.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage and the results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    from pathlib import Path

    from jaxknow.experiments.common import StageStopped
    from jaxknow.experiments.registry import experiment_runner

    def go() -> int:
        # The experiments are those the studies registered (`jaxknow.studies`, imported by
        # launch.common).
        runner = experiment_runner(_CONFIG.value.get("experiment"))
        resolve_named_models(_CONFIG.value)
        try:
            runner(_CONFIG.value, _WORKDIR.value)
        except StageStopped as e:
            print(f"stopped: {e}", file=sys.stderr)
            return EXIT_INTERRUPTED if e.interrupted else EXIT_TERMINATED
        print((Path(_WORKDIR.value) / "report.md").read_text())
        return 0

    sys.exit(run_main(go))


if __name__ == "__main__":
    run_app(main)
