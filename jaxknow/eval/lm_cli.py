"""``jaxknow-lm-eval`` (or ``python -m jaxknow.eval.lm_cli``): lm-eval's own command line with the
``jaxknow`` model type registered.

lm-evaluation-harness 0.4.13 resolves ``--model`` from its registry and does not load plugins
from package entry points, so ``lm_eval --model jaxknow`` alone only finds the model when
something imported `jaxknow.eval.lm_adapter` first (the task files written by
`jaxknow.eval.lm_tasks` do). This wrapper imports it and hands every argument to lm-eval::

    jaxknow-lm-eval --model jaxknow --model_args path=DIR --include_path TASKS --tasks jaxknow

Errors of the jaxknow model (no tokenizer, bad arguments, a missing checkpoint) are printed as
one line (``error: ...``, exit code 2).
"""

from __future__ import annotations

import sys

from jaxknow.data.tokenizer import TokenizerError
from jaxknow.io.checkpoint import CheckpointError


def main() -> None:
    """Registers the jaxknow model type and runs lm-eval's CLI on ``sys.argv``."""
    from lm_eval.__main__ import cli_evaluate

    import jaxknow.eval.lm_adapter as adapter
    import launch  # noqa: F401  (CPU device count and compilation cache, before jax loads)

    try:
        cli_evaluate()
    except (
        adapter.JaxknowLMError,
        CheckpointError,
        TokenizerError,
        FileNotFoundError,
        ValueError,
    ) as e:  # user errors (lm-eval's own unknown-model/task errors too)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
