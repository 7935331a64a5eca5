"""Train a model: ``python -m launch.train --config=configs/NAME.py --workdir=DIR
[--config.KEY=VALUE ...]``. A second call with the same DIR resumes from its latest checkpoint."""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from launch.common import EXIT_INTERRUPTED, resolve_named_models, run_app, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    from jaxknow.train.loop import train
    from jaxknow.train.setup import parse_run_config

    def go() -> int:
        resolve_named_models(_CONFIG.value)
        result = train(parse_run_config(_CONFIG.value), _WORKDIR.value)
        last = result.metrics[-1] if result.metrics else {}
        status = (
            "interrupted"
            if result.interrupted
            else "preempted"
            if result.preempted
            else "halted"
            if result.halted
            else "data exhausted"
            if result.data_exhausted
            else "done"
        )
        skipped = (
            f", {result.skipped_updates} non-finite updates skipped"
            if result.skipped_updates
            else ""
        )
        print(
            f"{status}: step {result.final_step}, loss "
            f"{last.get('loss', float('nan')):.4f}{skipped}"
        )
        return EXIT_INTERRUPTED if result.interrupted else 0

    sys.exit(run_main(go))


if __name__ == "__main__":
    run_app(main)
