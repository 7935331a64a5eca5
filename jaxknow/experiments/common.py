"""What every experiment runner shares: stage training configs, running (or resuming) a stage,
evaluation of a stage's model, and results / report files."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from ml_collections import ConfigDict

from jaxknow import config as C
from jaxknow.config import OptimConfig, OptimConfigError
from jaxknow.data.jsonl import atomic_path, read_jsonl
from jaxknow.io.metrics import read_metrics
from jaxknow.model.lora import resolve_targets
from jaxknow.train.loop import TrainResult, train


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Optimisation settings of one training stage (pretraining, finetuning, ...)."""

    steps: int = 100
    batch_size: int = 32
    seq_len: int = 256
    packing: str = "concat"
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    end_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    grad_accum: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    # Epochs instead of steps: when set, steps = ceil(epochs * documents / batch_size).
    epochs: float | None = None
    # Warmup as a fraction of the schedule's length (overrides warmup_steps when set).
    warmup_fraction: float | None = None

    def __post_init__(self) -> None:
        # Checked here so that a bad value stops the study before its first stage runs; the
        # optimiser fields are checked by OptimConfig itself.
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be positive")
        checks = {
            "packing": (
                self.packing in get_args(C.Packing),
                f"must be one of {get_args(C.Packing)}",
            ),
            "checkpoint_every": (self.checkpoint_every >= 0, "must be >= 0"),
            "epochs": (self.epochs is None or self.epochs > 0, "must be positive"),
            "warmup_fraction": (
                self.warmup_fraction is None or 0 <= self.warmup_fraction <= 1,
                "must be in [0, 1]",
            ),
        }
        for name, (ok, why) in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {why}")
        try:
            OptimConfig(
                lr=self.lr,
                schedule=self.schedule,
                warmup_steps=self.warmup_steps,
                total_steps=max(self.steps, self.warmup_steps),
                end_lr_fraction=self.end_lr_fraction,
                b1=self.b1,
                b2=self.b2,
                eps=self.eps,
                weight_decay=self.weight_decay,
                grad_clip=self.grad_clip,
            )
        except OptimConfigError as e:
            raise ValueError(str(e).removeprefix("optim.")) from None


def parse_modes(values: Any, field: str) -> tuple[str, ...]:
    """Returns the finetuning modes listed in `field` (default: full); raises ConfigError
    naming the field for anything but 'full' and 'lora'."""
    modes = tuple(values or ("full",))
    if set(modes) - {"full", "lora"}:
        raise C.ConfigError(f"{field}={list(modes)}: each must be 'full' or 'lora'")
    return modes


def stage_config(
    exp: Mapping[str, Any],
    stage: StageConfig,
    *,
    sources: Sequence[Mapping[str, Any]],
    data_dir: str | Path,
    steps: int | None = None,
    init_from: str | Path | None = None,
    lora: Mapping[str, Any] | None = None,
    trainable: str = "all",
    forget: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
    seed: int | None = None,
    keep_checkpoints: int = 1,
) -> ConfigDict:
    """Returns the training config of one stage: the experiment's model and mesh sections,
    the stage's optimiser settings, and the given data sources (already materialised)."""
    c = C.base_config()
    c.seed = exp.get("seed", 0) if seed is None else seed
    for k, v in (exp.get("model") or {}).items():
        c.model[k] = v
    for k, v in (exp.get("mesh") or {}).items():
        c.mesh[k] = v
    n = steps if steps is not None else stage.steps
    horizon = total_steps or n
    warmup = (
        math.ceil(stage.warmup_fraction * horizon)
        if stage.warmup_fraction is not None
        else min(stage.warmup_steps, horizon)
    )
    c.optim.update(
        dict(
            lr=stage.lr,
            schedule=stage.schedule,
            end_lr_fraction=stage.end_lr_fraction,
            warmup_steps=warmup,
            weight_decay=stage.weight_decay,
            b1=stage.b1,
            b2=stage.b2,
            eps=stage.eps,
            grad_clip=stage.grad_clip,
        )
    )
    if total_steps is not None:
        c.optim.total_steps = total_steps
    c.train.update(
        dict(
            steps=n,
            grad_accum=stage.grad_accum,
            log_every=stage.log_every,
            checkpoint_every=stage.checkpoint_every,
            progress=False,
            keep_checkpoints=keep_checkpoints,
            trainable=trainable,
        )
    )
    if init_from is not None:
        c.train.init_from = str(init_from)
    c.data.update(
        dict(
            seq_len=stage.seq_len,
            batch_size=stage.batch_size,
            packing=stage.packing,
            dir=str(data_dir),
            sources=[dict(s) for s in sources],
        )
    )
    if lora:
        c.lora.update(resolve_targets(lora, C.model_config(c.model.to_dict()).mlp))
    if forget:
        c.forget = ConfigDict(dict(forget))
    return c


def steps_for_epochs(stage: StageConfig, num_docs: int) -> int:
    """Returns the steps of `stage.epochs` passes over `num_docs` documents (one per row)."""
    if stage.epochs is None:
        return stage.steps
    return max(1, math.ceil(stage.epochs * num_docs / stage.batch_size))


class StageStopped(RuntimeError):
    """A stage stopped before its last step on SIGTERM or SIGINT (its checkpoint is saved):
    the study stops rather than go on with a half-trained model; the same command resumes."""

    def __init__(self, name: str, result: TrainResult) -> None:
        self.interrupted = result.interrupted
        signal = "SIGINT" if result.interrupted else "SIGTERM"
        super().__init__(
            f"stage {name!r} stopped at step {result.final_step} on {signal} "
            f"(checkpoint saved in {result.workdir}); run the same command again "
            f"to resume the study"
        )


def run_stage(name: str, cfg: ConfigDict, workdir: Path, log: Any = print) -> TrainResult:
    """Trains (or resumes, or finds finished) the stage `name` in `workdir`; returns its
    TrainResult with `metrics` read back from metrics.jsonl (the whole trajectory). Raises
    StageStopped when a signal stopped the stage early."""
    log(f"[{name}] training in {workdir}")
    result = train(cfg, workdir)
    if result.preempted or result.interrupted:
        raise StageStopped(name, result)
    result.metrics = (
        read_metrics(workdir / "metrics.jsonl")
        if (workdir / "metrics.jsonl").exists()
        else result.metrics
    )
    last = result.metrics[-1]["loss"] if result.metrics else float("nan")
    log(f"[{name}] step {result.final_step}, final loss {last:.4f}")
    return result


def read_events(workdir: Path) -> list[dict[str, Any]]:
    """Returns the rows of a run's events.jsonl (parameter resets), or []."""
    f = workdir / "events.jsonl"
    return read_jsonl(f) if f.is_file() else []


def write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def write_text(path: Path, text: str) -> None:
    """Writes a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
