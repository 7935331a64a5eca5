"""Shared plumbing of the absl entry points: user errors become one clear line and exit 2."""

from __future__ import annotations

import logging as pylogging
import sys
from collections.abc import Callable
from typing import Any

from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.tokenizer import TokenizerError
from jaxknow.io.checkpoint import CheckpointError

# Errors caused by the user's input (config, files, paths): reported without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, MeshError, WorkdirError, ModelConfigError, ... subclass it
    FileNotFoundError,
    NotADirectoryError,
    CheckpointError,
    CorpusFormatError,
    TokenizerError,
    KeyError,
)


def quiet_libraries() -> None:
    """Lowers absl logging to warnings (orbax and grain log every step at INFO) unless the user
    asked for a verbosity on the command line."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        # orbax warns on every read-only open of a checkpoint directory
        logging.get_absl_logger().addFilter(
            lambda r: not ("orbax" in r.pathname and r.levelno < pylogging.ERROR))


def run_main(fn: Callable[[], Any]) -> Any:
    """Calls fn; on a user error prints `error: <message>` to stderr and exits with code 2."""
    quiet_libraries()
    try:
        return fn()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
