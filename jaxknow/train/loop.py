"""The training loop: data in, jitted sharded steps, metrics out, checkpoints, resumption and
preemption handling."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxknow import config as C
from jaxknow.data import build, pipeline
from jaxknow.data.jsonl import atomic_path
from jaxknow.io.checkpoint import Checkpointer
from jaxknow.io.metrics import MetricWriter
from jaxknow.model.flops import peak_flops, train_flops_per_token
from jaxknow.model.lora import full_specs
from jaxknow.model.params import flatten
from jaxknow.model.sharded import abstract_params
from jaxknow.parallel import distributed
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, Sharder, logical_to_sharding
from jaxknow.train import guard as guard_lib
from jaxknow.train import setup
from jaxknow.train.forgetting import make_forget_event
from jaxknow.train.optim import make_optimizer, make_schedule
from jaxknow.train.state import TrainState, split_params
from jaxknow.train.step import BATCH_AXES, BATCH_KEYS, train_step

# A state event runs between steps: (step just completed, state) -> state.
StateEvent = Callable[[int, TrainState], TrainState]


@dataclasses.dataclass
class TrainResult:
    """What a training run returns."""

    state: TrainState
    metrics: list[dict[str, Any]]
    workdir: Path
    final_step: int
    start_step: int
    preempted: bool = False
    halted: bool = False
    data_exhausted: bool = False
    interrupted: bool = False  # SIGINT (Ctrl-C): saved, then stopped
    skipped_updates: int = 0  # non-finite updates skipped (train.nonfinite="skip")


class _Preemption:
    """Records SIGTERM and SIGINT so the loop can save and stop between steps. A second
    SIGINT interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self.interrupted = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)

    def any_process(self) -> bool:
        """Returns True if any process received SIGTERM (a collective on several hosts)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))


def batch_shardings(mesh: Mesh, rules: Rules, batch: int, seq: int) -> dict[str, NamedSharding]:
    """Returns the sharding of every batch array ([batch, seq], batch over data x fsdp)."""
    sh = logical_to_sharding(BATCH_AXES, (batch, seq), mesh, rules)
    return {k: sh for k in BATCH_KEYS}


def to_global(local: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict:
    """Returns global jax Arrays assembled from every process's local batch rows."""
    return {k: jax.make_array_from_process_local_data(shardings[k], local[k]) for k in BATCH_KEYS}


def make_iterator(spec: setup.RunSpec, data_dir: Path, state: dict | None) -> Any:
    """Returns this process's grain iterator over the run's sources (restored if `state`)."""
    names = [s["name"] for s in spec.data.sources]
    weights = [float(s.get("weight", 1.0)) for s in spec.data.sources]
    n_proc = jax.process_count()
    pcfg = pipeline.PipelineConfig(
        seq_len=spec.data.seq_len, batch_size=spec.data.batch_size,
        packing=spec.data.packing,
        seed=spec.data.seed if spec.data.seed is not None else spec.seed,
        num_epochs=spec.data.num_epochs, workers=spec.data.workers,
    )
    try:
        it = pipeline.process_batches(
            pipeline.source_datasets(str(data_dir), names), weights, pcfg,
            num_shards=spec.data.shards or n_proc, process_index=jax.process_index(),
            process_count=n_proc)
    except pipeline.PipelineConfigError as e:
        raise C.ConfigError(str(e)) from None
    if state is not None:
        try:
            it.set_state(state)
        except (KeyError, ValueError, TypeError) as e:
            raise C.ConfigError(
                f"the checkpoint's data-iterator state does not fit the data config "
                f"(data.sources / data.batch_size / data.packing changed?): {e}") from None
    return it


def _forget_event(spec: setup.RunSpec, mesh: Mesh, rules: Rules, tx: Any, shardings: Any,
                  workdir: Path) -> StateEvent:
    """Returns the active-forgetting event of a run; resets are logged to events.jsonl."""
    fcfg = spec.forget
    # The run's starting values are recomputed (deterministic), so a resumed run resets to
    # the same reference.
    reference = setup.initial_params(spec, mesh, rules)
    specs = flatten(full_specs(spec.model, spec.lora))

    def on_reset(step: int, paths: list[str]) -> None:
        if jax.process_index() == 0:
            with (workdir / "events.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "event": "reset", "to": fcfg.to,
                                    "reset_optimizer": fcfg.reset_optimizer,
                                    "num_params": len(paths), "paths": paths}) + "\n")

    return make_forget_event(fcfg, reference, spec.model.n_layers, tx, specs,
                             jax.random.key(spec.seed + 1), shardings, on_reset)


def data_dir_of(spec: setup.RunSpec, workdir: Path) -> Path:
    """Returns the run's data directory (data.dir, or WORKDIR/data)."""
    return Path(spec.data.dir) if spec.data.dir else workdir / "data"


def train(config: Any, workdir: str | Path, *, events: Sequence[StateEvent] = (),
          rules: Rules = DEFAULT_RULES) -> TrainResult:
    """Runs (or resumes) the training described by `config` in `workdir`; returns a
    TrainResult. Every config field is validated before anything is written."""
    spec = setup.parse_run_config(config)
    workdir = setup.check_workdir(workdir, create=False)
    distributed.maybe_initialize(spec.train.distributed)
    mesh = setup.build_mesh(spec)
    data_dir = data_dir_of(spec, workdir)
    data_seed = spec.data.seed if spec.data.seed is not None else spec.seed
    setup.check_resumable(config, workdir)
    build.check_world_matches(data_dir, spec.data.world, data_seed)
    with setup.workdir_lock(workdir):
        build.ensure_sources(data_dir, [s["name"] for s in spec.data.sources], spec.data.world,
                             data_seed)
        build.check_vocab(data_dir, spec.model.vocab_size)
        if jax.process_index() == 0:
            with atomic_path(workdir / "config.json") as tmp:
                tmp.write_text(json.dumps(C.to_plain(config), indent=1, default=str))
            tok = data_dir / "tokenizer.json"
            if tok.is_file() and data_dir != workdir:
                with atomic_path(workdir / "tokenizer.json") as tmp:
                    tmp.write_bytes(tok.read_bytes())
        return run(spec, workdir, mesh, data_dir, events=events, rules=rules)


def run(spec: setup.RunSpec, workdir: Path, mesh: Mesh, data_dir: Path, *,
        events: Sequence[StateEvent] = (), rules: Rules = DEFAULT_RULES) -> TrainResult:
    """Runs the loop for a parsed RunSpec on `mesh`; returns a TrainResult."""
    tc = spec.train
    tx = make_optimizer(spec.optim)
    schedule = make_schedule(spec.optim)
    ckpt = Checkpointer(tc.checkpoint_dir or workdir / "checkpoints",
                        keep=tc.keep_checkpoints, async_save=tc.async_checkpoint)
    latest = ckpt.resume_step(tc.resume_step)
    if latest is None:
        params = setup.initial_params(spec, mesh, rules)
        state, shardings = setup.build_state(params, spec, tx, mesh, rules)
        data_state = None
        start = 0
    else:
        # Resume: shapes come from the config, values from the checkpoint.
        specs = full_specs(spec.model, spec.lora)
        abstract = abstract_params(specs, spec.model.storage_dtype, mesh, rules)
        template, shardings = setup.build_state(
            jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract), spec, tx, mesh, rules)
        abstract_opt = jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            template.opt_state, shardings.opt_state)
        del template
        restored = ckpt.restore(abstract, abstract_opt, latest, verify=False)  # just verified
        trainable, frozen = split_params(restored["params"], setup.trainable_predicate(spec))
        state = TrainState(
            step=jax.device_put(jnp.asarray(latest, jnp.int32),
                                NamedSharding(mesh, PartitionSpec())),
            params=trainable, opt_state=restored["opt_state"], frozen=frozen)
        data_state = restored["data"]
        start = latest
        logging.info("resumed from %s at step %d", ckpt.directory, latest)
    if start >= tc.steps:
        ckpt.close()
        return TrainResult(state=state, metrics=[], workdir=workdir, final_step=start,
                           start_step=start)

    step_fn = functools.partial(
        train_step, cfg=spec.model, tx=tx, schedule=schedule,
        sharder=Sharder(mesh, rules), grad_accum=tc.grad_accum, loss_chunk=tc.loss_chunk)
    b_sh = batch_shardings(mesh, rules, spec.data.batch_size, spec.data.seq_len)
    replicated = NamedSharding(mesh, PartitionSpec())
    jstep = jax.jit(guard_lib.guarded(step_fn, tc.nonfinite),
                    in_shardings=(shardings, b_sh, replicated),
                    out_shardings=(shardings, replicated, replicated), donate_argnums=(0,))
    guard = jax.device_put(guard_lib.initial_guard(), replicated)

    events = list(events)
    if spec.forget is not None:
        events.append(_forget_event(spec, mesh, rules, tx, shardings, workdir))
    it = make_iterator(spec, data_dir, data_state)
    writer = MetricWriter(workdir, resume_step=start, tensorboard=tc.tensorboard,
                          progress_total=tc.steps, progress=tc.progress)
    flops_tok = train_flops_per_token(spec.model, spec.data.seq_len)
    peak = tc.peak_tflops * 1e12 if tc.peak_tflops else peak_flops()
    tokens_per_step = spec.data.batch_size * spec.data.seq_len
    meta = {"model": spec.model.to_dict(), "lora": dataclasses.asdict(spec.lora),
            "trainable": tc.trainable}
    if jax.process_index() == 0:
        with atomic_path(workdir / "model_config.json") as tmp:
            tmp.write_text(json.dumps(spec.model.to_dict(), indent=1))

    history: list[dict[str, Any]] = []
    # (step, metrics, guard state after that step): fetched one step late, so the host never
    # waits for the step it has just dispatched.
    pending: tuple[int, dict, guard_lib.GuardState] | None = None
    clock: dict[str, Any] = {"t": None, "step": start}
    skipped = 0

    def check_guard(g: guard_lib.GuardState) -> None:
        """Stops the run (NonFiniteError) on a non-finite step (fetches `g`)."""
        nonlocal skipped
        skipped = guard_lib.check(g, tc.nonfinite, tc.max_skipped, ckpt.last_saved
                                  if ckpt.last_saved is not None else (start or None))

    def flush() -> None:
        nonlocal pending
        if pending is None:
            return
        s, m, g = pending
        pending = None
        m, g = jax.device_get((m, g))
        row = {k: float(v) for k, v in m.items()}
        if tc.nonfinite == "skip":
            row["skipped_updates"] = int(g["skipped"])
        now = time.perf_counter()
        if clock["t"] is not None and s > clock["step"]:
            tps = (s - clock["step"]) * tokens_per_step / (now - clock["t"])
            row["tokens_per_s"] = tps
            if peak:
                row["mfu"] = tps * flops_tok / (peak * jax.device_count())
        clock["t"], clock["step"] = now, s
        history.append({"step": s, **row})
        writer.write(s, row)
        check_guard(g)  # after the row is written; fetched with the metrics

    def save(at: int) -> None:
        """Saves step `at` once (a halt or signal on a checkpoint step does not save twice),
        never with non-finite state."""
        flush()
        check_guard(guard)  # the state being saved is this step's
        if ckpt.last_saved != at:
            ckpt.save(at, state.model_params(), state.opt_state, meta, it.get_state())

    step = start
    metrics: dict | None = None
    preempted = halted = exhausted = interrupted = False
    try:
        with _Preemption() as preempt:
            while step < tc.steps:
                try:
                    local = next(it)
                except StopIteration:
                    exhausted = True
                    break
                state, metrics, guard = jstep(state, to_global(local, b_sh), guard)
                step += 1
                flush()
                ckpt.check()  # a failed background save is reported at once
                if step % tc.log_every == 0 or step == tc.steps or step == start + 1:
                    # per-source token counts as of this step's batch (data/pipeline.py)
                    pending = (step, {**metrics, **pipeline.source_token_metrics(
                        it, [s["name"] for s in spec.data.sources])}, guard)
                for ev in events:
                    state = ev(step, state)
                writer.advance()
                if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps:
                    save(step)
                if step % tc.preemption_check_every == 0 and preempt.any_process():
                    preempted, interrupted = not preempt.interrupted, preempt.interrupted
                    break
                if tc.halt_at is not None and step >= tc.halt_at:
                    halted = True
                    break
        if metrics is not None and (not history or history[-1]["step"] != step) and (
                pending is None or pending[0] != step):
            flush()
            pending = (step, metrics, guard)  # the reported loss is the last step's
        flush()
        if step > start:
            save(step)
        ckpt.close()
    except BaseException:
        # Let a save already in flight finish (it was intact when started); its own failure
        # is secondary to the error being raised.
        try:
            ckpt.close()
        except Exception as e:  # noqa: BLE001
            logging.warning("while stopping: %s", e)
        raise
    finally:
        writer.close()
    if preempted or interrupted:
        logging.warning("%s: saved a checkpoint at step %d and stopped",
                        "SIGINT" if interrupted else "SIGTERM", step)
    return TrainResult(state=state, metrics=history, workdir=workdir, final_step=step,
                       start_step=start, preempted=preempted, halted=halted,
                       data_exhausted=exhausted, interrupted=interrupted,
                       skipped_updates=skipped)
