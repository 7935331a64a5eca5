"""Typed configs: a plain mapping parsed once into a tree of frozen dataclasses.

An experiment config is an ml_collections `ConfigDict` (a config file plus
``--config.SECTION.FIELD=`` overrides). The entry point makes it plain Python (`to_plain`) and
`parse` builds from it the dataclass its consumer declares (`train.setup.RunSpec` for a
training run, a study's own dataclass for a study): each key is checked against the annotation
of the field it sets (`Literal`, int / float / bool / str, `X | None`, tuples, dict sections,
nested dataclasses), a field left out takes its dataclass default, and anything wrong is a
one-line ConfigError naming the dotted path (``finetune.lr: expected a float, got 'abc'``,
``train: unknown key(s) ['stepz']; known: [...]``). A setting is declared once, with its type
and default, in the dataclass that holds it; whatever needs the keys reads
`dataclasses.fields`.

This module holds the mechanism and the training sections every run shares (`MeshConfig`,
`LoopConfig` ⊂ `TrainConfig`, `BatchConfig` ⊂ `DataConfig`, `OptimSettings` ⊂ `OptimConfig`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from jaxknow.model.config import ModelConfig, ModelConfigError, preset

T = TypeVar("T")


class ConfigError(ValueError):
    """An experiment config has an unknown key or a bad value; the message names the field."""


class _Mismatch(ConfigError):
    """A value is not of the type its field declares (at `path`: a union tries its next type)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def to_plain(x: Any) -> Any:
    """Returns `x` as plain Python: ConfigDicts, FrozenConfigDicts and dataclasses (their init
    fields) as dicts, recursively; tuples as lists."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = field_values(x)
    if isinstance(x, Mapping):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    return x


def field_values(obj: Any) -> dict[str, Any]:
    """Returns {name: value} of the init fields of dataclass instance `obj` (not recursive)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    """Returns what a field of annotation `tp` takes, in words ("a float or None")."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"one of {typing.get_args(tp)}"
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["None"] if type(None) in args else []))
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an integer", float: "a float", bool: "a bool", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _mismatch(tp: Any, value: Any, path: str) -> _Mismatch:
    return _Mismatch(f"{path}: expected {_describe(tp)}, got {value!r}", path)


def _convert(value: Any, tp: Any, path: str, start: Any = None) -> Any:
    """Returns `value` checked against annotation `tp` (and converted: lists to tuples, ints to
    floats, mappings to dataclasses, `start` giving a nested section's starting values)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _mismatch(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, start)
            except _Mismatch as e:
                if e.path != path:  # a deeper field is wrong: the value took this type
                    raise
        raise _mismatch(tp, value, path)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _mismatch(tp, value, path)
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) > 1:
            raise TypeError(f"{path}: fixed-length tuple annotations are not supported ({tp})")
        elem = args[0] if args else Any
        return tuple(_convert(v, elem, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _mismatch(tp, value, path)
        args = typing.get_args(tp)
        elem = args[1] if args else Any
        return {k: _convert(v, elem, _join(path, str(k))) for k, v in value.items()}
    if tp is ModelConfig and not isinstance(value, ModelConfig):
        return model_config(value, path)  # a model section: a preset and field overrides
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _mismatch(tp, value, path)
        return parse(tp, value, path, defaults=None if start is None else field_values(start))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    if tp in (float, int, bool, str):
        raise _mismatch(tp, value, path)
    raise TypeError(f"{path}: no config conversion for the annotation {tp!r}")


def _at(path: str, message: str, names: Sequence[str]) -> str:
    """Returns a dataclass's own error message (``lr=-1.0: must be positive``, naming one of
    its fields `names`) placed at `path` (``pretrain.lr=-1.0: ...``)."""
    if not path:
        return message
    head = re.match(r"\w+", message)
    return f"{path}.{message}" if head and head.group() in names else f"{path}: {message}"


def parse(
    cls: type[T],
    values: Mapping[str, Any] | None,
    path: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> T:
    """Returns dataclass `cls` built from the plain mapping `values` (a config section at the
    dotted `path`; "" for a whole config).

    Every key must be an init field of `cls`; its value is checked against the field's
    annotation (see `_convert`), a nested section becomes its dataclass. A field left out
    takes its value from `defaults` when given there (a nested section given as a mapping
    then starts from the dataclass instance in `defaults`), else its dataclass default.
    The dataclass's own checks (`__post_init__`) run last: a ValueError naming one of its
    fields (``lr=-1.0: must be positive``) is placed at `path`. Raises ConfigError, one
    line naming the dotted path, for an unknown key, a missing required field, a value of
    the wrong type or one the dataclass rejects.
    """
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise _mismatch(cls, values, path or "config")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown key(s) {unknown}; known: {sorted(fields)}")
    defaults = defaults or {}
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            start = defaults.get(name)
            start = start if dataclasses.is_dataclass(start) else None
            kwargs[name] = _convert(values[name], hints[name], _join(path, name), start)
        elif name in defaults:
            kwargs[name] = defaults[name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(_at(path, str(e), list(fields))) from None


#: Field metadata of a training setting a resumed run must keep (see `resume_fixed`).
FIXED_ON_RESUME = "fixed_on_resume"


def resume_fixed(default: Any) -> Any:
    """Returns a dataclass field with `default` that a run resumed in the same workdir must not
    change (`train.setup.check_resumable` compares every such field, `fixed_on_resume`)."""
    return dataclasses.field(default=default, metadata={FIXED_ON_RESUME: True})


def fixed_on_resume(cls: type, path: str = "") -> list[str]:
    """Returns the dotted paths of the fields of dataclass `cls` (nested dataclass sections
    included) declared with `resume_fixed`."""
    out = []
    for f in dataclasses.fields(cls):
        where, tp = _join(path, f.name), _hints(cls)[f.name]
        if f.metadata.get(FIXED_ON_RESUME):
            out.append(where)
        elif dataclasses.is_dataclass(tp):
            out += fixed_on_resume(tp, where)
    return out


def model_config(values: Any, path: str = "model") -> ModelConfig:
    """Returns the ModelConfig of a `model` section: an optional `preset` plus field
    overrides (None values are left out: the config's unset placeholders)."""
    if not isinstance(values, Mapping):
        raise _mismatch(ModelConfig, values, path)
    values = {k: v for k, v in values.items() if v is not None}
    name = values.pop("preset", None)
    if name is not None and not isinstance(name, str):
        raise _mismatch(str, name, _join(path, "preset"))
    try:
        base = {} if name is None else preset(name).to_dict()
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None
    return parse(ModelConfig, {**base, **values}, path)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 fills the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


# How a run starts jax.distributed: "on" calls jax.distributed.initialize().
Distributed = Literal["auto", "on", "off"]
# A non-finite loss or gradient norm: "stop" (no checkpoint of the damaged state) or "skip"
# (drop that update; stop after more than max_skipped).
Nonfinite = Literal["stop", "skip"]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop settings one training stage of a study chooses (see TrainConfig)."""

    steps: int = 100
    grad_accum: int = 1
    loss_chunk: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end (and on preemption)
    # Run the caller's evaluation (train(..., evaluate=)) every this many steps and at the last
    # step, its scalars logged as "eval/NAME"; 0: never (no cost).
    eval_every: int = 0
    # Optimizer steps per jitted call (a lax.scan over that many batches): the same results as
    # 1, less host work per step (issue 28; docs/lab_notebook.md P4). Evaluations, checkpoints,
    # resets and halt_at stay on their steps; a signal is acted on after the call.
    steps_per_call: int = 1

    def __post_init__(self) -> None:
        for f in ("steps", "grad_accum", "log_every", "steps_per_call"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)!r}: must be positive")
        for f in ("loss_chunk", "checkpoint_every"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f}={getattr(self, f)!r}: must be >= 0")
        if self.eval_every < 0:
            raise ValueError(
                f"eval_every={self.eval_every!r}: must be >= 0 (0: no evaluation during training)"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Loop settings of a training run: LoopConfig's plus those of the run as a whole."""

    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    progress: bool = True
    tensorboard: bool = True
    # Stop (with a checkpoint) once this step is reached: time-sliced jobs, tests.
    halt_at: int | None = None
    # Start from the parameters of this checkpoint (a workdir, a checkpoints dir or a step dir).
    init_from: str | None = resume_fixed(None)
    # Where checkpoints go (default WORKDIR/checkpoints); on a multi-host pod, storage every
    # host reaches, e.g. gs://bucket/run.
    checkpoint_dir: str | None = None
    # Which parameters train: "all", "lora" (adapters only) or a regex over parameter paths.
    trainable: str = resume_fixed("all")
    peak_tflops: float | None = None  # per device, for MFU; None: known accelerators only
    preemption_check_every: int = 1
    distributed: Distributed = "auto"
    nonfinite: Nonfinite = "stop"
    max_skipped: int = 100
    # Resume from this checkpoint step (newer steps are set aside); None: the newest intact.
    resume_step: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        super().__post_init__()
        for f in ("keep_checkpoints", "preemption_check_every"):
            if getattr(self, f) <= 0:
                bad(f, "must be positive")
        if self.halt_at is not None and not 0 < self.halt_at <= self.steps:
            bad("halt_at", f"must be in (0, steps={self.steps}]")
        if self.max_skipped < 0:
            bad("max_skipped", "must be >= 0")
        if self.resume_step is not None and self.resume_step <= 0:
            bad("resume_step", "must be positive")
        if self.trainable not in ("all", "lora"):
            try:
                re.compile(self.trainable)
            except re.error as e:
                bad("trainable", f"bad regex ({e})")


# How documents become fixed-length rows (jaxknow.data.pipeline): concat splits them across
# rows; first_fit keeps each whole; pad puts one per row.
Packing = Literal["concat", "first_fit", "pad"]


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """How documents are batched: the data settings one training stage of a study chooses."""

    seq_len: int = resume_fixed(128)
    batch_size: int = resume_fixed(8)  # global, across processes
    packing: Packing = resume_fixed("concat")
    # False: a token attends only within its own document (segment masks, positions from 0
    # per document). True: within its whole row, as in GPT-style packing, so a document is
    # read after whatever documents precede it in the row.
    cross_document_attention: bool = False

    def __post_init__(self) -> None:
        for f in ("seq_len", "batch_size"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)!r}: must be positive")


@dataclasses.dataclass(frozen=True)
class DataConfig(BatchConfig):
    """Where training documents come from and how they are batched."""

    sources: tuple[dict, ...] = resume_fixed(())  # [{"name": ..., "weight": ...}]
    dir: str | None = resume_fixed(None)  # default: WORKDIR/data
    num_epochs: int | None = None
    workers: int = 0
    seed: int | None = resume_fixed(None)  # default: the config's seed
    world: dict | None = resume_fixed(None)  # what to materialise when `dir` lacks the sources
    # Shards of the global stream (each feeds batch_size / shards rows); default: one per
    # process. Fix it to reproduce a trajectory bit for bit on another number of hosts.
    shards: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sources:
            raise ValueError("sources: at least one source is required")
        for i, s in enumerate(self.sources):
            if "name" not in s:
                raise ValueError(f"sources[{i}]: missing 'name'")
            unknown = set(s) - {"name", "weight"}
            if unknown:
                raise ValueError(f"sources[{i}]: unknown key(s) {sorted(unknown)}")
            if float(s.get("weight", 1.0)) <= 0:
                raise ValueError(f"sources[{i}].weight: must be positive")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"num_epochs={self.num_epochs}: must be positive")


# The learning-rate schedule after the linear warmup.
Schedule = Literal["cosine", "linear", "constant"]


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """AdamW hyperparameters and the learning-rate schedule's shape: what one training stage of
    a study chooses (the schedule's length is the run's: OptimConfig)."""

    lr: float = 1e-3
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    end_lr_fraction: float = 0.1  # final lr as a fraction of `lr` (cosine and linear)
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Regexes over parameter paths that get no weight decay (norm scales, biases by default).
    no_decay: tuple[str, ...] = (r"norm/", r"/bias$")

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if not 0 <= self.end_lr_fraction <= 1:
            bad("end_lr_fraction", "must be in [0, 1]")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        for beta in ("b1", "b2"):
            if not 0 <= getattr(self, beta) < 1:
                bad(beta, "must be in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be positive")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0")
        for pat in self.no_decay:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"no_decay: bad regex {pat!r} ({e})") from None


@dataclasses.dataclass(frozen=True)
class OptimConfig(OptimSettings):
    """AdamW hyperparameters and the learning-rate schedule of a training run."""

    # The schedule's length; None: the run's train.steps (set by train.setup.RunSpec).
    total_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.total_steps is None:
            return
        if self.total_steps <= 0:
            raise ValueError(f"total_steps={self.total_steps!r}: must be positive")
        if self.warmup_steps > self.total_steps:
            why = f"must be in [0, total_steps={self.total_steps}]"
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: {why}")


def _scalar_type(tp: Any) -> Any:
    """Returns the type of a field's values: X of `X | None`, str of a Literal of strings."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if args and typing.get_origin(tp) is not typing.Literal else tp
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    return tp


def command_line_any(value: Any) -> Any:
    """Returns `value` in an untyped ml_collections `FieldReference`: a config file may assign
    it any value, and ``--config.KEY=TEXT`` gives the Python literal TEXT stands for (a tuple,
    list, number, ...) or else TEXT itself as a string."""
    from ml_collections import config_dict

    return config_dict.FieldReference(value, field_type=object)


def section_defaults(cls: type, skip: tuple[str, ...] = ()) -> Any:
    """Returns a ConfigDict holding every field of dataclass `cls` with its default, so that
    each can be overridden from the command line (None defaults become typed placeholders).

    Tuple defaults become lists held by an untyped `FieldReference` (`command_line_any`):
    ml_collections cannot override a list field from the command line, and a tuple field would
    refuse a string, while e.g. ``lora.targets`` takes either a preset name
    (``--config.lora.targets=all-linear``) or a tuple (``--config.lora.targets='("q","v")'``).
    The dataclass checks the value when the section is parsed.
    """
    from ml_collections import ConfigDict, config_dict

    hints = _hints(cls)
    out = ConfigDict()
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        tp = _scalar_type(hints[f.name])
        if value is None and tp in (int, float, str, bool):
            value = config_dict.placeholder(tp)
        elif isinstance(value, tuple):
            value = command_line_any(list(value))
        setattr(out, f.name, value)
    return out


def base_config() -> Any:
    """Returns a config with every section and field of a training run at its default.

    Experiment configs start from this and change what they need; any field can then be set
    with ``--config.SECTION.FIELD=VALUE``.
    """
    from ml_collections import ConfigDict, config_dict

    from jaxknow.model.lora import LoraConfig

    c = ConfigDict()
    c.seed = 0
    model = ConfigDict()
    model.preset = config_dict.placeholder(str)
    hints = _hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        tp = _scalar_type(hints[f.name])
        model[f.name] = config_dict.placeholder(tp) if tp in (int, float, str, bool) else None
    c.model = model
    c.mesh = section_defaults(MeshConfig)
    c.optim = section_defaults(OptimConfig)  # total_steps: None, train.steps
    c.train = section_defaults(TrainConfig)
    c.data = section_defaults(DataConfig)
    c.lora = section_defaults(LoraConfig)
    return c
