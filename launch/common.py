"""Shared plumbing of the absl entry points: user and environment errors become one clear line
and exit 2 (a traceback only with ``--verbosity=1`` or higher)."""

from __future__ import annotations

import errno
import logging as pylogging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app

import jaxknow.studies  # noqa: F401  (registers the built-in studies' world kinds and experiments)
from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.tokenizer import TokenizerError
from jaxknow.io.checkpoint import CheckpointError
from jaxknow.train.guard import NonFiniteError

# Errors caused by the user's input (config, files, paths) or the environment (a full or
# read-only disk): reported without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, MeshError, WorkdirError, ModelConfigError, ... subclass it
    OSError,  # FileNotFoundError, PermissionError, ENOSPC, EROFS, ...
    CheckpointError,
    CorpusFormatError,
    TokenizerError,
    NonFiniteError,
    KeyError,
    app.UsageError,
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def verbose(argv: list[str] | None = None) -> bool:
    """Returns True when the user asked for ``--verbosity`` (or ``-v``) >= 1 (tracebacks)."""
    from absl import flags

    if flags.FLAGS.is_parsed():
        return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
    for a in argv or sys.argv:
        for prefix in ("--verbosity=", "-v="):
            if a.startswith(prefix):
                try:
                    return int(a[len(prefix) :]) >= 1
                except ValueError:
                    return False
    return False


def one_line(e: BaseException) -> str:
    """Returns the message of an error on one line (errno and path of an OSError named)."""
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.strerror:
        path = f": {e.filename}" if e.filename else ""
        code = f" ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else ""
        msg = f"{e.strerror}{path}{code}"
    elif isinstance(e, SyntaxError):
        msg = f"{e.filename}:{e.lineno}: {e.msg}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


def fail(e: BaseException) -> NoReturn:
    """Prints `error: <one line>` to stderr and exits with code 2."""
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def quiet_libraries() -> None:
    """Lowers absl logging to warnings (orbax and grain log every step at INFO) unless the user
    asked for a verbosity on the command line; orbax's and asyncio's own error reports (with
    tracebacks) are left out too, since the failure is reported in one line."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        logging.get_absl_logger().addFilter(lambda r: "orbax" not in r.pathname)
        pylogging.getLogger("asyncio").setLevel(pylogging.CRITICAL)
        drop_closed_loop_errors()


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def drop_closed_loop_errors() -> None:
    """Keeps asyncio's "Event loop is closed" out of stderr: the checkpoint library's
    callbacks raise it in background threads once a failed save has closed its loop (e.g. a
    full disk), burying the one-line report; every other error is printed as before."""
    import threading

    hook, thook, uhook = sys.excepthook, threading.excepthook, sys.unraisablehook
    sys.excepthook = lambda t, v, tb: None if _closed_loop(v) else hook(t, v, tb)
    threading.excepthook = lambda a: None if _closed_loop(a.exc_value) else thook(a)
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else uhook(u)


def config_error(e: BaseException, argv: list[str]) -> str:
    """Returns one line for an error raised while loading a config file or applying a
    ``--config.KEY=VALUE`` override."""
    cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e
    if isinstance(cause, AttributeError | KeyError):
        key = str(cause).strip("\"'")
        flag = next((a.split("=")[0] for a in argv if a.split("=")[0].endswith(f".{key}")), None)
        if flag:
            return f"{flag}: no such field in the config"
    text = one_line(cause)
    if "Failed loading config file" in text:
        why = str(cause).strip().splitlines()[-1].strip()
        return f"--config: cannot load the config file ({why})"
    kind = "" if isinstance(cause, OSError) else f"{type(cause).__name__}: "
    return f"--config: {kind}{text}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser: a bad flag, an unknown ``--config.`` key or a missing / broken config
    file is one line and exit 2 (absl's own handling prints tracebacks)."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        for flag in flags.FLAGS._flags().values():  # noqa: SLF001
            if type(flag).__name__ == "_ConfigFlag" and flag.present:
                from jaxknow.config import to_plain

                to_plain(flag.value)  # a config that failed to load raises here
    except flags.Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as e:  # noqa: BLE001 - config files can raise anything
        if verbose(argv):
            raise
        print(f"error: {config_error(e, argv)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    return rest


def run_app(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with `parse_flags` (one-line errors for bad flags and configs)."""
    app.run(main, flags_parser=parse_flags)


def run_main(fn: Callable[[], Any]) -> Any:
    """Calls fn; on a user or environment error prints `error: <message>` to stderr and exits
    with code 2 (re-raises with ``--verbosity=1``); a second Ctrl-C exits 130."""
    quiet_libraries()
    try:
        return fn()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:
        if verbose():
            raise
        fail(e)


def resolve_named_models(config: Any) -> None:
    """Replaces a named model ("gguf:NAME") in `train.init_from` or a study's `base.init_from`
    by its converted cache directory (converting it on first use), so every later stage, the
    data's tokenizer and the recorded config see a plain path."""
    from jaxknow.io.named_models import is_named, resolve_model_path

    for section in ("train", "base"):
        sec = config.get(section) if hasattr(config, "get") else None
        if sec is not None and hasattr(sec, "get") and is_named(sec.get("init_from")):
            sec["init_from"] = str(resolve_model_path(sec["init_from"]))
