"""The training loop: data in, jitted sharded steps, metrics out, checkpoints, resumption and
preemption handling."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
from jaxknow.model.params import flatten, per_layer_specs, unflatten
from jaxknow.parallel import distributed
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, Sharder, logical_to_sharding
from jaxknow.train import guard as guard_lib
from jaxknow.train import setup
from jaxknow.train.forgetting import make_forget_event
from jaxknow.train.optim import make_optimizer, make_schedule
from jaxknow.train.state import TrainState, split_params
from jaxknow.train.step import BATCH_AXES, BATCH_KEYS, scan_steps, train_step

# A state event runs between steps: (step just completed, state) -> state.
StateEvent = Callable[[int, TrainState], TrainState]
# An evaluation during training (train.eval_every): (step just completed, the model's full
# parameter tree (layers stacked), its ModelConfig) -> scalars, logged as "eval/NAME".
Evaluator = Callable[[int, Any, Any], Mapping[str, float]]


@dataclasses.dataclass
class TrainResult:
    """What a training run returns (`state.model_params()`: the model's parameters, layers
    stacked, as checkpoints hold them)."""

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
    eval_seconds: float = 0.0  # time spent in the evaluations of train.eval_every (this call)
    eval_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)


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
        seq_len=spec.data.seq_len,
        batch_size=spec.data.batch_size,
        packing=spec.data.packing,
        cross_document_attention=spec.data.cross_document_attention,
        seed=spec.data.seed if spec.data.seed is not None else spec.seed,
        num_epochs=spec.data.num_epochs,
        workers=spec.data.workers,
    )
    try:
        it = pipeline.process_batches(
            pipeline.source_datasets(str(data_dir), names),
            weights,
            pcfg,
            num_shards=spec.data.shards or n_proc,
            process_index=jax.process_index(),
            process_count=n_proc,
        )
    except pipeline.PipelineConfigError as e:
        raise C.ConfigError(str(e)) from None
    if state is not None:
        try:
            it.set_state(state)
        except (KeyError, ValueError, TypeError) as e:
            raise C.ConfigError(
                f"the checkpoint's data-iterator state does not fit the data config "
                f"(data.sources / data.batch_size / data.packing changed?): {e}"
            ) from None
    return it


def _forget_event(
    spec: setup.RunSpec, mesh: Mesh, rules: Rules, tx: Any, shardings: Any, workdir: Path
) -> StateEvent:
    """Returns the active-forgetting event of a run; resets are logged to events.jsonl."""
    fcfg = spec.forget
    # The run's starting values are recomputed (deterministic), so a resumed run resets to
    # the same reference.
    reference = setup.initial_params(spec, mesh, rules)
    specs = flatten(per_layer_specs(full_specs(spec.model, spec.lora)))

    def on_reset(step: int, paths: list[str]) -> None:
        if jax.process_index() == 0:
            with (workdir / "events.jsonl").open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "event": "reset",
                            "to": fcfg.to,
                            "reset_optimizer": fcfg.reset_optimizer,
                            "num_params": len(paths),
                            "paths": paths,
                        }
                    )
                    + "\n"
                )

    return make_forget_event(
        fcfg,
        reference,
        spec.model.n_layers,
        tx,
        specs,
        jax.random.key(spec.seed + 1),
        shardings,
        on_reset,
    )


def data_dir_of(spec: setup.RunSpec, workdir: Path) -> Path:
    """Returns the run's data directory (data.dir, or WORKDIR/data)."""
    return Path(spec.data.dir) if spec.data.dir else workdir / "data"


def train(
    config: setup.RunSpec | Any,
    workdir: str | Path,
    *,
    events: Sequence[StateEvent] = (),
    rules: Rules = DEFAULT_RULES,
    evaluate: Evaluator | None = None,
) -> TrainResult:
    """Runs (or resumes) the training described by `config` (a RunSpec, or a config that
    `setup.parse_run_config` parses here) in `workdir`; returns a TrainResult. Every field is
    validated before anything is written; WORKDIR/config.json records the RunSpec. `evaluate`
    runs every `train.eval_every` steps (and at the last step) when that is > 0."""
    spec = config if isinstance(config, setup.RunSpec) else setup.parse_run_config(config)
    workdir = setup.check_workdir(workdir, create=False)
    distributed.maybe_initialize(spec.train.distributed)
    mesh = setup.build_mesh(spec)
    data_dir = data_dir_of(spec, workdir)
    data_seed = spec.data.seed if spec.data.seed is not None else spec.seed
    setup.check_resumable(spec, workdir)
    build.check_world_matches(data_dir, spec.data.world, data_seed)
    with setup.workdir_lock(workdir):
        build.ensure_sources(
            data_dir, [s["name"] for s in spec.data.sources], spec.data.world, data_seed
        )
        build.check_vocab(data_dir, spec.model.vocab_size)
        setup.check_tokenizer_matches(spec, workdir, data_dir)
        if jax.process_index() == 0:
            with atomic_path(workdir / "config.json") as tmp:
                tmp.write_text(json.dumps(C.to_plain(spec), indent=1, default=str))
            tok = data_dir / "tokenizer.json"
            if tok.is_file() and data_dir != workdir:
                with atomic_path(workdir / "tokenizer.json") as tmp:
                    tmp.write_bytes(tok.read_bytes())
        return run(spec, workdir, mesh, data_dir, events=events, rules=rules, evaluate=evaluate)


def _start_state(
    spec: setup.RunSpec, ckpt: Checkpointer, mesh: Mesh, rules: Rules, tx: Any
) -> tuple[TrainState, Any, dict | None, int]:
    """Returns (state, its shardings, the data-iterator state or None, start step): fresh
    parameters, or the newest intact checkpoint (`train.resume_step`) when there is one, read
    in the layout of the run's state (`setup.state_specs`; a checkpoint of an earlier version,
    per layer, is converted on read)."""
    latest = ckpt.resume_step(spec.train.resume_step)
    if latest is None:
        params = setup.initial_params(spec, mesh, rules)
        state, shardings = setup.build_state(params, spec, tx, mesh, rules)
        return state, shardings, None, 0
    # Resume: shapes and shardings come from the config (nothing allocated), values from the
    # checkpoint, read straight into their shards.
    template, shardings = setup.abstract_state(spec, tx, mesh, rules)
    abstract = unflatten({**flatten(template.params), **flatten(template.frozen)})
    abstract_opt = template.opt_state
    restored = ckpt.restore(abstract, abstract_opt, latest, verify=False)  # just verified
    trainable, frozen = split_params(restored["params"], setup.trainable_predicate(spec))
    state = TrainState(
        step=jax.device_put(jnp.asarray(latest, jnp.int32), NamedSharding(mesh, PartitionSpec())),
        params=trainable,
        opt_state=restored["opt_state"],
        frozen=frozen,
    )
    logging.info("resumed from %s at step %d", ckpt.directory, latest)
    return state, shardings, restored["data"], latest


def _jit_step(
    spec: setup.RunSpec, mesh: Mesh, rules: Rules, tx: Any, shardings: Any, k: int = 1
) -> tuple[Callable[..., Any], dict[str, NamedSharding]]:
    """Returns (the jitted, guarded train step (state, batch, guard) -> (state, metrics,
    guard), donating the state; the batch shardings). With `k` > 1: the jitted call of `k`
    such steps over batches stacked on a leading axis (`step.scan_steps`), and their
    shardings."""
    tc = spec.train
    step_fn = functools.partial(
        train_step,
        cfg=spec.model,
        tx=tx,
        schedule=make_schedule(spec.optim),
        sharder=Sharder(mesh, rules),
        grad_accum=tc.grad_accum,
        loss_chunk=tc.loss_chunk,
    )
    b_sh = batch_shardings(mesh, rules, spec.data.batch_size, spec.data.seq_len)
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = guard_lib.guarded(step_fn, tc.nonfinite)
    if k > 1:
        fn = scan_steps(fn)
        b_sh = {n: NamedSharding(mesh, PartitionSpec(None, *s.spec)) for n, s in b_sh.items()}
    jstep = jax.jit(
        fn,
        in_shardings=(shardings, b_sh, replicated),
        out_shardings=(shardings, *(replicated,) * (3 if k > 1 else 2)),
        donate_argnums=(0,),
    )
    return jstep, b_sh


class _Pending(NamedTuple):
    """A logged step's metrics and guard state, waiting to be fetched."""

    step: int
    metrics: dict
    guard: guard_lib.GuardState
    index: int | None = None  # metrics and guard stacked over a group's steps: this one's
    host: Mapping[str, float] = {}  # values already on the host (per-source token counts)


class _Loop:
    """The step loop of one run and its stop / save logic. Metrics are fetched one step (or one
    group of `train.steps_per_call` steps) late, so the host never waits for the call it has
    just dispatched."""

    def __init__(
        self,
        spec: setup.RunSpec,
        workdir: Path,
        ckpt: Checkpointer,
        it: Any,
        state: TrainState,
        guard: Any,
        start: int,
        evaluate: Evaluator | None = None,
        steps_per_call: int = 1,
    ) -> None:
        tc = spec.train
        self.spec, self.tc, self.ckpt, self.it = spec, tc, ckpt, it
        self.state, self.guard, self.start, self.step = state, guard, start, start
        self.writer = MetricWriter(
            workdir,
            resume_step=start,
            tensorboard=tc.tensorboard,
            progress_total=tc.steps,
            progress=tc.progress,
        )
        self.flops_tok = train_flops_per_token(spec.model, spec.data.seq_len)
        self.peak = tc.peak_tflops * 1e12 if tc.peak_tflops else peak_flops()
        self.tokens_per_step = spec.data.batch_size * spec.data.seq_len
        self.meta = {
            "model": spec.model.to_dict(),
            "lora": dataclasses.asdict(spec.lora),
            "trainable": tc.trainable,
        }
        self.history: list[dict[str, Any]] = []
        self.pending: list[_Pending] = []
        self.clock: dict[str, Any] = {"t": None, "step": start}
        self.skipped = 0
        self.metrics: _Pending | None = None  # the last step's (its step field unused)
        self.steps_per_call = steps_per_call
        self.forget_steps = set(spec.forget.at_steps) if spec.forget is not None else set()
        self.preempted = self.halted = self.exhausted = self.interrupted = False
        # Off (None) unless train.eval_every > 0 and the caller gave an evaluation.
        self.evaluate = evaluate if tc.eval_every > 0 else None
        self.eval_seconds = 0.0
        self.eval_history: list[dict[str, Any]] = []

    def run_eval(self, step: int) -> None:
        """Runs the evaluation on the state after `step`; writes its scalars ("eval/NAME" and
        "eval/seconds") as a row of that step. Its time is kept out of tokens/s."""
        assert self.evaluate is not None
        t0 = time.perf_counter()
        params = self.state.model_params()
        scalars = self.evaluate(step, params, self.spec.model)
        dt = time.perf_counter() - t0
        self.eval_seconds += dt
        row = {f"eval/{k}": float(v) for k, v in scalars.items()}
        row["eval/seconds"] = dt
        self.eval_history.append({"step": step, **row})
        self.writer.write(step, row)
        if self.clock["t"] is not None:
            self.clock["t"] += dt

    def check_guard(self, g: guard_lib.GuardState) -> None:
        """Stops the run (NonFiniteError) on a non-finite step (fetches `g`)."""
        last = self.ckpt.last_saved
        self.skipped = guard_lib.check(
            g,
            self.tc.nonfinite,
            self.tc.max_skipped,
            last if last is not None else (self.start or None),
        )

    def flush(self, before: int | None = None) -> None:
        """Fetches the pending metrics (of steps before `before`, if given) and writes their
        rows (with tokens/s and MFU since the previous fetch), then checks the guard state
        fetched with each."""
        pending = [p for p in self.pending if before is None or p.step < before]
        self.pending = self.pending[len(pending) :]
        if not pending:
            return
        fetched = jax.device_get([(p.metrics, p.guard) for p in pending])
        now = time.perf_counter()
        last = pending[-1].step
        tps = None
        if self.clock["t"] is not None and last > self.clock["step"]:
            tps = (last - self.clock["step"]) * self.tokens_per_step / (now - self.clock["t"])
        self.clock["t"], self.clock["step"] = now, last
        for p, (m, g) in zip(pending, fetched):
            if p.index is not None:
                m, g = jax.tree.map(lambda x: x[p.index], (m, g))  # noqa: B023
            row = {k: float(v) for k, v in {**m, **p.host}.items()}
            if self.tc.nonfinite == "skip":
                row["skipped_updates"] = int(g["skipped"])
            if tps is not None:
                row["tokens_per_s"] = tps
                if self.peak:
                    row["mfu"] = tps * self.flops_tok / (self.peak * jax.device_count())
            self.history.append({"step": p.step, **row})
            self.writer.write(p.step, row)
            self.check_guard(g)  # after the row is written; fetched with the metrics

    def save(self, at: int) -> None:
        """Saves step `at` once (a halt or signal on a checkpoint step does not save twice),
        never with non-finite state."""
        self.flush()
        self.check_guard(self.guard)  # the state being saved is this step's
        if self.ckpt.last_saved != at:
            self.ckpt.save(
                at,
                self.state.model_params(),
                self.state.opt_state,
                self.meta,
                self.it.get_state(),
            )

    def run(
        self,
        jstep: Callable[..., Any],
        b_sh: dict[str, NamedSharding],
        events: Sequence[StateEvent],
        preempt: _Preemption,
        group: tuple[Callable[..., Any], dict[str, NamedSharding]] | None = None,
    ) -> None:
        """Runs steps until `train.steps`, the end of the data, a signal or `train.halt_at`,
        recording why it stopped. `group` (the jitted call of `steps_per_call` steps and its
        batch shardings) runs that many steps at once wherever `group_size` allows."""
        names = [s["name"] for s in self.spec.data.sources]
        while self.step < self.tc.steps:
            k = self.group_size() if group is not None else 1
            batches, counts = [], {}
            for i in range(k):
                try:
                    batches.append(next(self.it))
                except StopIteration:
                    self.exhausted = True
                    break
                if self.logs(self.step + i + 1):
                    # per-source token counts as of this step's batch (data/pipeline.py)
                    counts[self.step + i + 1] = pipeline.source_token_metrics(self.it, names)
            if group is not None and len(batches) == k > 1:
                stacked = {n: np.stack([b[n] for b in batches]) for n in BATCH_KEYS}
                self.state, m, gs, self.guard = group[0](
                    self.state, to_global(stacked, group[1]), self.guard
                )
                first, self.step = self.step, self.step + k
                self.metrics = _Pending(self.step, m, gs, k - 1)
                self.flush()
                self.ckpt.check()  # a failed background save is reported at once
                self.pending += [_Pending(s, m, gs, s - first - 1, c) for s, c in counts.items()]
                self.writer.advance(k)
                if self.between(first, events, preempt):
                    return
                continue
            for local in batches:
                self.state, m, self.guard = jstep(self.state, to_global(local, b_sh), self.guard)
                self.step += 1
                step = self.step
                self.metrics = _Pending(step, m, self.guard)
                self.flush()
                self.ckpt.check()
                if step in counts:
                    self.pending.append(_Pending(step, m, self.guard, None, counts[step]))
                self.writer.advance()
                if self.between(step - 1, events, preempt):
                    return
            if self.exhausted:
                return

    def logs(self, step: int) -> bool:
        """Returns whether `step` writes a row of training metrics."""
        return step % self.tc.log_every == 0 or step == self.tc.steps or step == self.start + 1

    def group_size(self) -> int:
        """Returns `steps_per_call` when that many steps from here can run in one call: no
        evaluation, checkpoint, forget reset or halt falls on a step before the last of them
        (those run between calls) and the run does not end earlier; else 1."""
        tc, k, s = self.tc, self.steps_per_call, self.step
        if k == 1 or s + k > tc.steps:
            return 1
        for t in range(s + 1, s + k):
            if (
                (self.evaluate is not None and t % tc.eval_every == 0)
                or (tc.checkpoint_every and t % tc.checkpoint_every == 0)
                or (tc.halt_at is not None and t >= tc.halt_at)
                or t in self.forget_steps
            ):
                return 1
        return k

    def between(self, first: int, events: Sequence[StateEvent], preempt: _Preemption) -> bool:
        """Runs what follows the call that took the run from step `first` to `self.step`
        (state events, evaluation, checkpoint, preemption check, halt); returns whether the
        run stops. A preemption check due at any of those steps runs here."""
        tc, step = self.tc, self.step
        for ev in events:
            self.state = ev(step, self.state)
        if self.evaluate is not None and (step % tc.eval_every == 0 or step == tc.steps):
            self.flush(before=step)  # earlier steps' rows first, as one step per call writes
            self.run_eval(step)
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps:
            self.save(step)
        every = tc.preemption_check_every
        if step // every > first // every and preempt.any_process():
            self.preempted, self.interrupted = not preempt.interrupted, preempt.interrupted
            return True
        if tc.halt_at is not None and step >= tc.halt_at:
            self.halted = True
            return True
        return False

    def finish(self) -> None:
        """Reports the last step's metrics (if not already) and saves the last step."""
        step = self.step
        written = bool(self.history) and self.history[-1]["step"] == step
        queued = any(p.step == step for p in self.pending)
        if self.metrics is not None and not written and not queued:
            self.flush()
            self.pending.append(self.metrics)  # the reported loss is the last step's
        self.flush()
        if step > self.start:
            self.save(step)

    def result(self, workdir: Path) -> TrainResult:
        """Returns the run's TrainResult."""
        return TrainResult(
            state=self.state,
            metrics=self.history,
            workdir=workdir,
            final_step=self.step,
            start_step=self.start,
            preempted=self.preempted,
            halted=self.halted,
            data_exhausted=self.exhausted,
            interrupted=self.interrupted,
            skipped_updates=self.skipped,
            eval_seconds=self.eval_seconds,
            eval_metrics=self.eval_history,
        )


def run(
    spec: setup.RunSpec,
    workdir: Path,
    mesh: Mesh,
    data_dir: Path,
    *,
    events: Sequence[StateEvent] = (),
    rules: Rules = DEFAULT_RULES,
    evaluate: Evaluator | None = None,
) -> TrainResult:
    """Runs the loop for a parsed RunSpec on `mesh`; returns a TrainResult (`evaluate`: see
    `train`)."""
    tc = spec.train
    tx = make_optimizer(spec.optim, spec.model)
    ckpt = Checkpointer(
        tc.checkpoint_dir or workdir / "checkpoints",
        keep=tc.keep_checkpoints,
        async_save=tc.async_checkpoint,
    )
    state, shardings, data_state, start = _start_state(spec, ckpt, mesh, rules, tx)
    if start >= tc.steps:
        ckpt.close()
        return TrainResult(
            state=state,
            metrics=[],
            workdir=workdir,
            final_step=start,
            start_step=start,
        )
    jstep, b_sh = _jit_step(spec, mesh, rules, tx, shardings)
    # Caller events run after every step: they need every step's state, so one step per call.
    k = tc.steps_per_call if not events else 1
    if k < tc.steps_per_call:
        logging.info("train.steps_per_call=%d: 1 step per call (state events)", tc.steps_per_call)
    group = _jit_step(spec, mesh, rules, tx, shardings, k) if k > 1 else None
    guard = jax.device_put(guard_lib.initial_guard(), NamedSharding(mesh, PartitionSpec()))
    events = list(events)
    if spec.forget is not None:
        events.append(_forget_event(spec, mesh, rules, tx, shardings, workdir))
    it = make_iterator(spec, data_dir, data_state)
    loop = _Loop(spec, workdir, ckpt, it, state, guard, start, evaluate, k)
    if jax.process_index() == 0:
        with atomic_path(workdir / "model_config.json") as tmp:
            tmp.write_text(json.dumps(spec.model.to_dict(), indent=1))
    try:
        with _Preemption() as preempt:
            loop.run(jstep, b_sh, events, preempt, group)
        loop.finish()
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
        loop.writer.close()
    if loop.preempted or loop.interrupted:
        logging.warning(
            "%s: saved a checkpoint at step %d and stopped",
            "SIGINT" if loop.interrupted else "SIGTERM",
            loop.step,
        )
    return loop.result(workdir)
