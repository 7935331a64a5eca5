"""Training: mesh equivalence, resumption, overfitting, loss weights, accumulation."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
from configs.smoke import get_config
from jaxknow.io.metrics import read_metrics
from jaxknow.model import config as mc
from jaxknow.model import transformer
from jaxknow.model.params import init_params, param_specs
from jaxknow.parallel.mesh import make_mesh
from jaxknow.parallel.rules import DEFAULT_RULES, Sharder
from jaxknow.train import loop, optim, setup
from jaxknow.train.state import new_state
from jaxknow.train.step import train_step
from tests.util import popen_module, run_module


def small_config(steps: int = 8):
    c = get_config()
    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = 0
    c.train.progress = False
    c.train.tensorboard = False
    c.optim.warmup_steps = 2
    return c


def test_same_losses_on_1x1x1_and_2x2x2_mesh_and_params_are_sharded(tmp_path):
    cfg = small_config(steps=6)
    spec = setup.parse_run_config(cfg)
    data_dir = _materialized(tmp_path, spec)
    one = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    eight = make_mesh(2, 2, 2)
    r1 = loop.run(spec, setup.check_workdir(tmp_path / "a"), one, data_dir)
    r8 = loop.run(spec, setup.check_workdir(tmp_path / "b"), eight, data_dir)
    l1 = [m["loss"] for m in r1.metrics]
    l8 = [m["loss"] for m in r8.metrics]
    assert len(l1) == len(l8) == 6
    np.testing.assert_allclose(l1, l8, rtol=2e-5)
    assert l1[-1] < l1[0]
    # The layers are stacked, their leading layer axis unsharded.
    up = r8.state.params["layers"]["mlp"]["up"]["kernel"]
    assert up.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert len(up.sharding.device_set) == 8
    q = r8.state.params["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    # Adam moments follow their parameters.
    mu = r8.state.opt_state[1][0].mu["layers"]["mlp"]["up"]["kernel"]
    assert mu.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert r1.state.params["layers"]["mlp"]["up"]["kernel"].sharding.is_fully_replicated


def test_same_seed_gives_identical_metrics(tmp_path):
    """Two runs of one config on one machine agree bit for bit (the reproducibility promise
    behind every published figure); another seed gives other losses."""
    cfg = small_config(steps=5)
    spec = setup.parse_run_config(cfg)
    data_dir = _materialized(tmp_path, spec)
    mesh = make_mesh(-1, 1, 1)
    runs = [
        loop.run(spec, setup.check_workdir(tmp_path / name), mesh, data_dir) for name in ("a", "b")
    ]
    a, b = ([(m["step"], m["loss"], m["grad_norm"]) for m in r.metrics] for r in runs)
    assert len(a) == 5 and a == b
    timing = {"tokens_per_s", "mfu"}
    on_disk = [
        [
            {k: v for k, v in row.items() if k not in timing}
            for row in read_metrics(tmp_path / name / "metrics.jsonl")
        ]
        for name in "ab"
    ]
    assert len(on_disk[0]) == 5 and on_disk[0] == on_disk[1]
    other = loop.run(
        dataclasses.replace(spec, seed=spec.seed + 1),
        setup.check_workdir(tmp_path / "c"),
        mesh,
        data_dir,
    )
    assert [m["loss"] for m in other.metrics] != [x[1] for x in a]


def _launch(workdir, *overrides, steps=10):
    return run_module(
        "launch.train",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.train.log_every=1",
        "--config.train.progress=False",
        "--config.train.tensorboard=False",
        *overrides,
    )


def test_resume_in_new_process_continues_the_same_trajectory(tmp_path):
    full = _launch(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    part = _launch(tmp_path / "part", "--config.train.halt_at=4")
    assert part.returncode == 0, part.stderr[-2000:]
    assert "halted: step 4" in part.stdout
    rest = _launch(tmp_path / "part")
    assert rest.returncode == 0, rest.stderr[-2000:]
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")}
    assert sorted(b) == sorted(a) == list(range(1, 11))
    for s in range(5, 11):
        assert a[s] == pytest.approx(b[s], rel=1e-6, abs=1e-7), s


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    proc = popen_module(
        "launch.train",
        "--config=configs/smoke.py",
        f"--workdir={tmp_path}",
        "--config.train.steps=100000",
        "--config.train.log_every=1",
        "--config.train.progress=False",
        "--config.train.tensorboard=False",
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted: step" in out
    step = int(out.split("preempted: step")[1].split(",")[0])
    assert 3 <= step < 100000
    assert (tmp_path / "checkpoints" / str(step) / "params").is_dir()


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    # Unknown key on the command line.
    r = _launch(tmp_path / "w1", "--config.train.no_such_key=3")
    assert r.returncode != 0 and "no_such_key" in r.stderr
    assert not (tmp_path / "w1").exists()
    # Unknown key inside a config file.
    bad = tmp_path / "bad_config.py"
    bad.write_text(
        "from configs.smoke import get_config as base\n"
        "def get_config():\n    c = base()\n    c.train.unlock()\n    c.train.stepz = 3\n"
        "    return c\n"
    )
    r = run_module("launch.train", f"--config={bad}", f"--workdir={tmp_path / 'w2'}")
    assert r.returncode == 2 and "train: unknown key(s) ['stepz']" in r.stderr
    assert not (tmp_path / "w2").exists()
    # A mesh that does not match the device count.
    r = _launch(tmp_path / "w3", "--config.mesh.data=3")
    assert r.returncode == 2 and "mesh" in r.stderr and "8 are available" in r.stderr
    assert not (tmp_path / "w3").exists()
    # A workdir that is a file: an error, and the file is left as it was.
    f = tmp_path / "afile"
    f.write_text("keep me")
    r = _launch(f)
    assert r.returncode == 2 and "is not a directory" in r.stderr
    assert f.read_text() == "keep me"
    # A bad value names its field.
    r = _launch(tmp_path / "w4", "--config.optim.schedule=wavy")
    assert r.returncode == 2 and "optim.schedule" in r.stderr


def _tiny_state(cfg, tx, key=0):
    params = init_params(param_specs(cfg), jax.random.key(key), jnp.float32)
    return new_state(params, {}, tx)


def _batch(tokens, weights=None):
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    w = jnp.ones((b, t - 1), jnp.float32) if weights is None else jnp.asarray(weights)
    return {
        "inputs": inputs,
        "targets": targets,
        "weights": w,
        "segment_ids": jnp.ones_like(inputs),
        "positions": jnp.broadcast_to(jnp.arange(t - 1), (b, t - 1)),
    }


def test_overfits_one_small_batch():
    cfg = mc.preset("tiny", vocab_size=64, max_seq_len=32)
    ocfg = optim.OptimConfig(lr=1e-2, schedule="constant", total_steps=300, weight_decay=0.0)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    state = _tiny_state(cfg, tx)
    rng = np.random.default_rng(0)
    batch = _batch(rng.integers(0, 64, (2, 17)))
    step = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched))
    first = None
    for _ in range(150):
        state, m = step(state, batch)
        first = first if first is not None else float(m["loss"])
    assert first > 3.0
    assert float(m["loss"]) < 0.05


def test_zero_loss_weights_remove_tokens_from_loss_and_gradient():
    cfg = mc.preset("tiny", vocab_size=64, max_seq_len=32)
    params = init_params(param_specs(cfg), jax.random.key(1), jnp.float32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 9))
    weights = np.ones((2, 8), np.float32)
    weights[:, :4] = 0.0  # e.g. a prompt: no loss
    other = tokens.copy()
    other[:, 1:5] = (other[:, 1:5] + 7) % 64  # change exactly the zero-weight targets

    def loss(p, b):
        lg = transformer.apply(p, b["inputs"], cfg)
        lp = jax.nn.log_softmax(lg)
        nll = -jnp.take_along_axis(lp, b["targets"][..., None], -1)[..., 0]
        return jnp.sum(nll * b["weights"]) / jnp.sum(b["weights"])

    b1, b2 = _batch(tokens, weights), _batch(other, weights)
    # Inputs differ too (they are shifted targets), so compare against the trainer's loss on
    # batches that differ only in the zero-weight targets.
    b2 = dict(b2, inputs=b1["inputs"])
    l1, g1 = jax.value_and_grad(loss)(params, b1)
    l2, g2 = jax.value_and_grad(loss)(params, b2)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The trainer agrees: its loss ignores the zero-weight targets.
    ocfg = optim.OptimConfig(lr=1e-3, total_steps=10)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    _, m1 = train_step(new_state(params, {}, tx), b1, cfg=cfg, tx=tx, schedule=sched)
    _, m2 = train_step(new_state(params, {}, tx), b2, cfg=cfg, tx=tx, schedule=sched)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
    assert float(m1["loss"]) == pytest.approx(float(l1), rel=1e-5)
    # ...while a changed weighted target does change it.
    third = tokens.copy()
    third[:, 6] = (third[:, 6] + 3) % 64
    b3 = dict(_batch(third, weights), inputs=b1["inputs"])
    _, m3 = train_step(new_state(params, {}, tx), b3, cfg=cfg, tx=tx, schedule=sched)
    assert abs(float(m3["loss"]) - float(m1["loss"])) > 1e-4


def test_grad_accumulation_and_chunked_loss_match_the_plain_step():
    cfg = mc.preset("tiny", vocab_size=64, max_seq_len=32)
    ocfg = optim.OptimConfig(lr=1e-3, total_steps=10)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    rng = np.random.default_rng(3)
    w = rng.random((4, 16)).astype(np.float32)
    batch = _batch(rng.integers(0, 64, (4, 17)), w)
    mesh = make_mesh(4, 2, 1)
    outs = {}
    for name, kw in {"plain": {}, "accum": {"grad_accum": 2}, "chunk": {"loss_chunk": 4}}.items():
        st = _tiny_state(cfg, tx)
        st, m = jax.jit(
            functools.partial(
                train_step, cfg=cfg, tx=tx, schedule=sched, sharder=Sharder(mesh), **kw
            )
        )(st, batch)
        outs[name] = (m, st.params)
    for name in ("accum", "chunk"):
        assert float(outs[name][0]["loss"]) == pytest.approx(
            float(outs["plain"][0]["loss"]), rel=1e-5
        )
        assert float(outs[name][0]["grad_norm"]) == pytest.approx(
            float(outs["plain"][0]["grad_norm"]), rel=1e-4
        )
        for a, b in zip(jax.tree.leaves(outs[name][1]), jax.tree.leaves(outs["plain"][1])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_data_parallel_step_sums_local_gradients_like_the_one_device_step(scan):
    """On a mesh that splits only the batch the step differentiates each device's shard and
    sums once (`step.pure_data_axis`); it must give the one-device step's loss and update."""
    from jaxknow.train.step import pure_data_axis

    cfg = mc.preset("tiny", vocab_size=64, max_seq_len=32, scan_layers=scan)
    ocfg = optim.OptimConfig(lr=1e-3, total_steps=10)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    rng = np.random.default_rng(5)
    batch = _batch(rng.integers(0, 64, (8, 17)), rng.random((8, 16)).astype(np.float32))
    dp = make_mesh(4, 1, 1, devices=jax.devices()[:4])
    assert pure_data_axis(Sharder(dp), 8) == "data"
    assert pure_data_axis(Sharder(dp), 2) is None  # uneven: the partitioner's path
    assert pure_data_axis(Sharder(make_mesh(2, 2, 1, devices=jax.devices()[:4])), 8) is None
    assert pure_data_axis(Sharder(None), 8) is None
    outs = []
    for sharder in (Sharder(None), Sharder(dp)):
        st = _tiny_state(cfg, tx)
        for _ in range(2):
            st, m = jax.jit(
                functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched, sharder=sharder)
            )(st, batch)
        outs.append((m, st.params))
    (m1, p1), (m4, p4) = outs
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_file_has_the_contract_fields(tmp_path):
    spec = setup.parse_run_config(small_config(steps=3))
    res = loop.run(
        spec, setup.check_workdir(tmp_path), make_mesh(-1, 1, 1), _materialized(tmp_path, spec)
    )
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in rows)
    assert "tokens_per_s" in rows[-1]
    assert json.loads((tmp_path / "model_config.json").read_text())["d_model"] == 64
    assert res.final_step == 3


def _materialized(tmp_path, spec):
    from jaxknow.data import build

    d = tmp_path / "data"
    build.ensure_sources(d, [s["name"] for s in spec.data.sources], spec.data.world, spec.seed)
    return d


def _token_batches(n, vocab, b=8, t=16):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tokens = jnp.asarray(rng.integers(0, vocab, (b, t + 1)), jnp.int32)
        out.append(
            {
                "inputs": tokens[:, :-1],
                "targets": tokens[:, 1:],
                "weights": jnp.ones((b, t), jnp.float32),
                "segment_ids": jnp.ones((b, t), jnp.int32),
                "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
            }
        )
    return out


@pytest.mark.parametrize(
    "lora,scan,mesh_shape",
    [
        (False, True, (2, 2, 2)),
        (True, True, (2, 2, 2)),
        (False, False, (2, 1, 1)),
        (True, False, (2, 1, 1)),
    ],
)
def test_a_per_layer_state_trains_like_the_stacked_state(lora, scan, mesh_shape):
    """The state of a run that treats its layers differently holds them per layer; the same
    parameters held stacked (one [L, ...] leaf per kind, an unsharded layer axis) take the
    same steps, weight decay and clipping included: scanned on a data x fsdp x tensor mesh,
    to fp32 round-off; in the layer loop (whose gradient norm is summed layer by layer,
    `optim.global_norm`) on a batch-only mesh such as the CPU runs', bit for bit: the
    stacked layout trains as every layer in its own leaf did."""
    from jax.sharding import NamedSharding

    from jaxknow.model.layout import is_per_layer, stack, unstack
    from jaxknow.model.lora import LoraConfig, full_specs, is_lora_path
    from jaxknow.model.params import flatten, per_layer_specs
    from jaxknow.model.sharded import abstract_params, init_sharded_params
    from jaxknow.train.state import split_params

    cfg = mc.preset(
        "tiny", n_layers=3, vocab_size=128, max_seq_len=32, dtype="float32", scan_layers=scan
    )
    lcfg = LoraConfig(rank=2, targets=("q", "up")) if lora else LoraConfig()
    cfg = cfg.replace(lora_scale=lcfg.scale)
    specs = full_specs(cfg, lcfg)
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[: np.prod(mesh_shape)])
    params = init_sharded_params(specs, jax.random.key(0), jnp.float32, mesh)
    if lora:  # non-zero B, so the adapters change the loss
        up = params["layers"]["mlp"]["up"]
        params["layers"]["mlp"]["up"] = {**up, "lora_b": up["lora_b"] + 0.1}
    is_trainable = is_lora_path if lora else (lambda p: True)
    ocfg = optim.OptimConfig(
        lr=1e-2, weight_decay=0.1, grad_clip=0.2, warmup_steps=1, total_steps=10
    )
    tx = optim.make_optimizer(ocfg, cfg)
    sched = optim.make_schedule(ocfg)
    bsh = loop.batch_shardings(mesh, DEFAULT_RULES, 8, 16)
    batches = [{k: jax.device_put(v, bsh[k]) for k, v in b.items()} for b in _token_batches(4, 128)]
    runs = {}
    for per_layer in (False, True):
        p, sp = params, specs
        if per_layer:
            sp = per_layer_specs(specs)
            out_sh = jax.tree.map(lambda a: a.sharding, abstract_params(sp, jnp.float32, mesh))
            p = jax.jit(unstack, out_shardings=out_sh)(params)
        trainable, frozen = split_params(p, is_trainable)
        state, sh = setup.sharded_state(trainable, frozen, flatten(sp), tx, mesh)
        assert is_per_layer(state) is per_layer
        step = jax.jit(
            functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched, sharder=Sharder(mesh)),
            in_shardings=(sh, bsh),
            out_shardings=(sh, None),
        )
        losses = []
        for b in batches:
            state, m = step(state, b)
            losses.append((float(m["loss"]), float(m["grad_norm"])))
        runs[per_layer] = (losses, state)
    (l0, s0), (l1, s1) = runs[False], runs[True]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert l0[-1][0] != l0[0][0] and min(n for _, n in l0) > 0.2  # trained, every step clipped
    if not scan:
        assert l1 == l0
        jax.tree.map(np.testing.assert_array_equal, stack(s1), s0)
    # Stacked: one leaf per kind, leading layer axis unsharded; Adam moments follow.
    name = "lora_a" if lora else "kernel"
    up = s0.params["layers"]["mlp"]["up"][name]
    assert up.shape[0] == 3 and "0" not in s0.params["layers"]
    assert isinstance(up.sharding, NamedSharding) and up.sharding.spec[0] is None
    if not lora:
        if scan:
            assert up.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
        assert s0.opt_state[1][0].mu["layers"]["mlp"]["up"]["kernel"].sharding == up.sharding
    else:
        assert s0.frozen["layers"]["mlp"]["up"]["kernel"].shape[0] == 3
    # Per layer: each layer's leaf sharded like the stacked one without its layer axis.
    assert s1.params["layers"]["1"]["mlp"]["up"][name].sharding.spec == PartitionSpec(
        *up.sharding.spec[1:]
    )
    back = stack(s1)
    assert jax.tree.structure(back) == jax.tree.structure(s0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (back.params, back.opt_state, back.frozen),
        (s0.params, s0.opt_state, s0.frozen),
    )


def test_runs_that_treat_layers_differently_keep_a_per_layer_state():
    from jaxknow.model.layout import is_per_layer
    from jaxknow.model.params import flatten
    from jaxknow.train.state import homogeneous_layers

    cfg = mc.preset("tiny", n_layers=3, vocab_size=64, max_seq_len=32)
    paths = list(flatten(param_specs(cfg)))
    every = lambda p: True  # noqa: E731
    assert homogeneous_layers(paths, 3, every, (r"norm/",))
    # a weight-decay pattern that treats layers differently
    assert not homogeneous_layers(paths, 3, every, (r"layers/0/",))
    # only some layers trained
    assert not homogeneous_layers(paths, 3, lambda p: p.startswith(("layers/1/", "layers/2/")))
    # the same projections of every layer trained
    assert homogeneous_layers(paths, 3, lambda p: "/attn/" in p)
    # a layer-specific no_decay pattern on parameters that are not trained does not matter
    assert homogeneous_layers(paths, 3, lambda p: "/attn/" in p, (r"layers/0/mlp",))
    # what a run's state holds
    for trainable, no_decay, per_layer in (
        ("all", (), False),
        ("attn", (), False),
        ("layers/1/", (), True),
        ("all", (r"layers/2/mlp",), True),
    ):
        c = small_config()
        c.model.n_layers = 3
        c.train.trainable = trainable
        c.optim.no_decay = no_decay
        specs = setup.state_specs(setup.parse_run_config(c))
        assert is_per_layer(specs) is per_layer, (trainable, no_decay)


def _halted_run(cfg, at: int, workdir, mesh, data_dir):
    """Runs `cfg` into `workdir` until it halts at step `at`; returns the checked workdir."""
    half_cfg = copy.deepcopy(cfg)
    half_cfg.train.halt_at = at
    w = setup.check_workdir(workdir)
    assert loop.run(setup.parse_run_config(half_cfg), w, mesh, data_dir).halted
    return w


def _layers_config(steps=6, **train):
    cfg = small_config(steps=steps)
    cfg.model.n_layers = 3
    cfg.train.checkpoint_every = 3
    cfg.train.update(train)
    cfg.data.batch_size = 8
    cfg.data.seq_len = 64
    return cfg


def _stored_paths(step_dir):
    """Returns the parameter paths a checkpoint step holds (its orbax tree metadata)."""
    import orbax.checkpoint as ocp

    from jaxknow.model.params import flatten

    meta = ocp.StandardCheckpointer().metadata(step_dir / "params")
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return set(flatten(dict(tree)))


@pytest.mark.parametrize("trainable", ["all", "layers/1/"])
def test_checkpoints_hold_stacked_layers_and_scan_loop_and_resume_agree(tmp_path, trainable):
    """Checkpoints, load_model and the returned state hold the layers stacked; the scan and
    the layer loop give the same losses (fp32 round-off); halting and resuming gives the
    uninterrupted run's losses and parameters. With only layer 1 trained the state holds its
    layers per layer, the other layers keep their initial values."""
    from jaxknow.io.load import load_model
    from jaxknow.model.layout import is_per_layer
    from jaxknow.model.params import flatten

    cfg = _layers_config(trainable=trainable)
    spec = setup.parse_run_config(cfg)
    data_dir = _materialized(tmp_path, spec)
    mesh = make_mesh(2, 2, 2)
    runs = {}
    for scan in (False, True):
        c = copy.deepcopy(cfg)
        c.model.scan_layers = scan
        layouts = []

        def record(step, state, layouts=layouts):
            layouts.append(is_per_layer(state))
            return state

        w = setup.check_workdir(tmp_path / f"scan{scan}")
        runs[scan] = loop.run(setup.parse_run_config(c), w, mesh, data_dir, events=[record])
        assert layouts and set(layouts) == {trainable != "all"}
    la = [m["loss"] for m in runs[False].metrics]
    np.testing.assert_allclose([m["loss"] for m in runs[True].metrics], la, rtol=1e-5)
    assert la[-1] < la[0]
    full = runs[False]
    paths = _stored_paths(tmp_path / "scanFalse" / "checkpoints" / "3")
    assert "layers/attn/q/kernel" in paths and not any(p.startswith("layers/0") for p in paths)
    assert paths == set(flatten(full.state.model_params()))
    assert not is_per_layer(full.state.model_params())

    b = _halted_run(cfg, 3, tmp_path / "b", mesh, data_dir)
    rest = loop.run(spec, b, mesh, data_dir)
    assert rest.start_step == 3 and rest.final_step == 6
    lb = {m["step"]: m["loss"] for m in rest.metrics}
    for s in (4, 5, 6):
        assert lb[s] == la[s - 1], s
    jax.tree.map(
        np.testing.assert_array_equal, rest.state.model_params(), full.state.model_params()
    )
    loaded = load_model(tmp_path / "scanFalse").params
    jax.tree.map(np.testing.assert_array_equal, loaded, full.state.model_params())
    if trainable != "all":
        init = setup.initial_params(spec, mesh)
        kernel = loaded["layers"]["mlp"]["up"]["kernel"]
        for i in (0, 2):
            np.testing.assert_array_equal(kernel[i], init["layers"]["mlp"]["up"]["kernel"][i])
        assert not np.array_equal(kernel[1], init["layers"]["mlp"]["up"]["kernel"][1])


def test_per_layer_checkpoints_of_earlier_versions_resume_and_load(tmp_path, monkeypatch):
    """A checkpoint as earlier versions wrote it (parameters and Adam moments with every layer
    under its own index, ``layers/2/attn/q/kernel``: the train state passed through
    `to_per_layer` before the save) is stacked on read, on an fsdp mesh without a whole copy
    of a sharded tensor: resuming it gives the losses and parameters of resuming the same
    state saved stacked, bit for bit; load_model gives the same parameters and logits."""
    import shutil

    from jaxknow.io import checkpoint as ckpt_lib
    from jaxknow.io.load import load_model, score_tokens
    from jaxknow.model.layout import unstack
    from jaxknow.model.lora import full_specs
    from jaxknow.model.params import flatten
    from jaxknow.model.sharded import abstract_params

    cfg = _layers_config()
    spec = setup.parse_run_config(cfg)
    data_dir = _materialized(tmp_path, spec)
    mesh = make_mesh(1, 8, 1)
    new = _halted_run(cfg, 3, tmp_path / "new", mesh, data_dir)
    # The same step written in the old layout, through the same Checkpointer.
    old = tmp_path / "old"
    shutil.copytree(new, old, ignore=shutil.ignore_patterns("checkpoints"))
    tx = optim.make_optimizer(spec.optim)
    template, _ = setup.abstract_state(spec, tx, mesh)
    abstract = abstract_params(full_specs(spec.model, spec.lora), "float32", mesh)
    reader = ckpt_lib.Checkpointer(new / "checkpoints", read_only=True)
    saved = reader.restore(abstract, template.opt_state, 3)
    meta = reader.read_meta(3)
    reader.close()
    writer = ckpt_lib.Checkpointer(old / "checkpoints", async_save=False)
    writer.save(3, unstack(saved["params"]), unstack(saved["opt_state"]), meta, saved["data"])
    writer.close()
    del saved
    assert "layers/2/attn/q/kernel" in _stored_paths(old / "checkpoints" / "3")
    assert "layers/attn/q/kernel" in _stored_paths(new / "checkpoints" / "3")

    loaded = {w: load_model(w, mesh=mesh) for w in (new, old)}
    jax.tree.map(np.testing.assert_array_equal, loaded[old].params, loaded[new].params)
    kernel = loaded[old].params["layers"]["mlp"]["up"]["kernel"]
    assert kernel.shape[0] == 3 and not kernel.sharding.is_fully_replicated
    tokens = list(range(1, 20))
    np.testing.assert_array_equal(
        score_tokens(loaded[old], tokens), score_tokens(loaded[new], tokens)
    )
    del loaded, kernel

    import gc

    gc.collect()
    sharded = {  # the stacked tensors the mesh shards and each of their layers
        s
        for p, a in flatten(abstract).items()
        if not a.sharding.is_fully_replicated
        for s in (tuple(a.shape), *([tuple(a.shape[1:])] if p.startswith("layers/") else []))
    }
    found, converted = [], []
    real = ckpt_lib._to_layout

    def probed(tree, target):
        out = real(tree, target)
        converted.append(out is not tree)
        found.extend(_whole_copies(sharded))
        return out

    monkeypatch.setattr(ckpt_lib, "_to_layout", probed)
    rests = {w: loop.run(spec, w, mesh, data_dir) for w in (new, old)}
    assert any(converted) and not found, found[:3]
    assert [m["loss"] for m in rests[old].metrics] == [m["loss"] for m in rests[new].metrics]
    assert rests[old].start_step == 3 and len(rests[old].metrics) == 3
    jax.tree.map(
        np.testing.assert_array_equal,
        rests[old].state.model_params(),
        rests[new].state.model_params(),
    )
    jax.tree.map(
        np.testing.assert_array_equal, rests[old].state.opt_state, rests[new].state.opt_state
    )
    assert set(flatten(rests[old].state.params)) == set(flatten(rests[new].state.params))


@pytest.mark.parametrize("every", [0, 3])
def test_eval_every_writes_the_evaluation_at_its_steps_and_costs_nothing_when_off(tmp_path, every):
    cfg = small_config(steps=7)
    cfg.train.eval_every = every
    calls = []

    def evaluate(step, params, model_cfg):
        assert "embed" in params or params  # the model's parameter tree
        calls.append(step)
        return {"score": step / 10}

    r = loop.train(cfg, tmp_path, evaluate=evaluate)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    evals = [r_ for r_ in rows if "eval/score" in r_]
    if every == 0:
        assert calls == [] and evals == [] and r.eval_seconds == 0.0
        return
    assert calls == [3, 6, 7]  # every 3 steps and the last one
    assert [(e["step"], e["eval/score"]) for e in evals] == [(3, 0.3), (6, 0.6), (7, 0.7)]
    assert all(e["eval/seconds"] >= 0 for e in evals)
    assert [e["step"] for e in r.eval_metrics] == [3, 6, 7] and r.eval_seconds > 0
    assert len([r_ for r_ in rows if "loss" in r_]) == 7  # training rows unchanged


def _whole_copies(sharded_shapes: set[tuple[int, ...]]) -> list[str]:
    """Live arrays with the shape of a tensor the mesh shards that some device holds whole."""
    out = []
    for a in jax.live_arrays():
        if a.is_deleted() or tuple(a.shape) not in sharded_shapes:
            continue
        whole = [s.device for s in a.addressable_shards if tuple(s.data.shape) == a.shape]
        if whole:
            out.append(f"{a.shape} {a.dtype} whole on {whole[0]} ({a.sharding})")
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_resume_on_an_fsdp_mesh_never_holds_a_whole_sharded_tensor(tmp_path, monkeypatch, scan):
    """Resuming over 8 CPU devices (fsdp=8) builds its restore template from shapes only:
    at every point the state passes through (state building, checkpoint restore, the step's
    compilation) no device holds a whole copy of a tensor the mesh shards. With
    the template made of `jnp.zeros(shape)` (the old resume) the state-building probe fails."""
    from jaxknow.io.checkpoint import Checkpointer
    from jaxknow.model.lora import full_specs
    from jaxknow.model.sharded import abstract_params

    cfg = small_config(steps=4)
    cfg.model.scan_layers = scan
    cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 8
    cfg.data.seq_len = 64
    spec = setup.parse_run_config(cfg)
    data_dir = _materialized(tmp_path, spec)
    mesh = make_mesh(1, 8, 1)
    w = _halted_run(cfg, 2, tmp_path / "w", mesh, data_dir)
    import gc

    gc.collect()
    abstract = abstract_params(full_specs(spec.model, spec.lora), "float32", mesh)
    sharded = {
        tuple(a.shape) for a in jax.tree.leaves(abstract) if not a.sharding.is_fully_replicated
    }
    assert sharded, "the fsdp mesh shards nothing: the test would check nothing"
    assert not _whole_copies(sharded), "the halted run left whole copies behind"
    found: list[str] = []
    probes: list[str] = []

    def probe(where):
        probes.append(where)
        found.extend(f"{where}: {w}" for w in _whole_copies(sharded))

    def watch(obj, name):
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            probe(f"{name} (enter)")
            out = fn(*a, **k)
            probe(f"{name} (exit)")
            return out

        monkeypatch.setattr(obj, name, wrapped)

    watch(setup, "build_state")
    watch(setup, "sharded_state")
    watch(Checkpointer, "restore")
    watch(loop, "_jit_step")
    rest = loop.run(spec, w, mesh, data_dir)
    assert rest.start_step == 2 and rest.final_step == 4
    assert "restore (exit)" in probes and "_jit_step (enter)" in probes
    assert not found, found[:3]
    # load_model with the mesh reads the checkpoint straight into the shards as well.
    from jaxknow.io.load import load_model

    del rest
    gc.collect()
    found.clear()
    model = load_model(w, mesh=mesh)
    probe("load_model (exit)")
    assert not found, found[:3]
    kernel = model.params["layers"]["mlp"]["up"]["kernel"]
    assert kernel.shape[0] == spec.model.n_layers and not kernel.sharding.is_fully_replicated


def _grouped_calls(monkeypatch):
    """Counts the calls of the jitted K-step function (train.steps_per_call > 1)."""
    calls = []
    real = loop._jit_step

    def spy(*args, **kw):
        fn, sh = real(*args, **kw)
        if args[5:] and args[5] > 1 or kw.get("k", 1) > 1:

            def counted(*a):
                calls.append(1)
                return fn(*a)

            return counted, sh
        return fn, sh

    monkeypatch.setattr(loop, "_jit_step", spy)
    return calls


def _steps_per_call_config(data_dir, steps, **train):
    cfg = small_config(steps=steps)
    cfg.train.update({"log_every": 2, **train})
    cfg.data.update(dict(batch_size=4, seq_len=64, dir=str(data_dir)))
    return cfg


def _rows(workdir):
    timing = {"tokens_per_s", "mfu", "eval/seconds"}
    return [
        {k: v for k, v in r.items() if k not in timing}
        for r in read_metrics(workdir / "metrics.jsonl")
    ]


def test_steps_per_call_trains_like_one_step_per_call(tmp_path, smoke_data, monkeypatch):
    """train.steps_per_call=4 runs groups of 4 steps in one jitted call where no evaluation or
    checkpoint falls inside one, and one step per call around them: the same logged rows
    (losses, grad norms, learning rates, per-source token counts), evaluations and checkpoints
    at the same steps, the same final parameters as one step per call."""
    from jaxknow.io.checkpoint import Checkpointer

    runs = {}
    for k in (1, 4):
        cfg = _steps_per_call_config(
            smoke_data, 19, steps_per_call=k, eval_every=6, checkpoint_every=8, keep_checkpoints=5
        )
        evals = []

        def evaluate(step, params, model_cfg, evals=evals):
            evals.append(step)
            return {"embed_norm": float(jnp.linalg.norm(params["embed"]["positions"]))}

        calls = _grouped_calls(monkeypatch)
        w = tmp_path / f"k{k}"
        res = loop.train(cfg, w, evaluate=evaluate)
        monkeypatch.undo()
        steps = Checkpointer(w / "checkpoints", read_only=True).all_steps()
        runs[k] = (res, _rows(w), evals, steps, len(calls))
    (r1, rows1, ev1, ck1, g1), (r4, rows4, ev4, ck4, g4) = runs[1], runs[4]
    # groups 1-4, 9-12 and 13-16; evaluations at 6, 12, 18 and 19 and the checkpoint at 8
    # send 5-8 and 17-19 one step per call
    assert (g1, g4) == (0, 3)
    assert ev1 == ev4 == [6, 12, 18, 19]
    assert ck1 == ck4 and 8 in ck1 and 16 in ck1 and 19 in ck1
    assert r4.final_step == 19 and not (r4.halted or r4.data_exhausted)
    assert [r["step"] for r in rows1] == [r["step"] for r in rows4]
    assert [r["step"] for r in r4.metrics] == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19]
    for a, b in zip(rows1, rows4):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
        r4.state.model_params(),
        r1.state.model_params(),
    )


def test_steps_per_call_halts_resumes_and_ends_with_the_data_exactly(
    tmp_path, smoke_data, monkeypatch
):
    """With steps_per_call=4: halt_at inside what would be a group halts on its step (and
    saves it); resuming gives the uninterrupted one-step-per-call run's losses; data running
    out inside a group loses and repeats no batch (same final step and losses as 1)."""
    from jaxknow.io.checkpoint import Checkpointer

    full = loop.train(_steps_per_call_config(smoke_data, 14, log_every=1), tmp_path / "one")
    cfg = _steps_per_call_config(smoke_data, 14, log_every=1, steps_per_call=4, halt_at=6)
    calls = _grouped_calls(monkeypatch)
    half = loop.train(cfg, tmp_path / "w")
    assert half.halted and half.final_step == 6
    assert Checkpointer(tmp_path / "w" / "checkpoints", read_only=True).all_steps() == [6]
    cfg.train.halt_at = None
    rest = loop.train(cfg, tmp_path / "w")
    assert rest.start_step == 6 and rest.final_step == 14
    assert len(calls) == 3  # 1-4, then 7-10 and 11-14 after the resume
    la = {m["step"]: m["loss"] for m in full.metrics}
    lb = {m["step"]: m["loss"] for m in (*half.metrics, *rest.metrics)}
    assert sorted(lb) == list(range(1, 15))
    for s in lb:
        assert lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6), s

    # One epoch of a small source: find where it ends with one step per call, then end it in
    # the middle of a group.
    def epoch(k, name):
        c = _steps_per_call_config(smoke_data, 1000, log_every=1, steps_per_call=k)
        c.data.num_epochs = 1
        c.data.batch_size = 64
        return loop.train(c, tmp_path / name)

    one = epoch(1, "epoch1")
    assert one.data_exhausted
    k = 4 if one.final_step % 4 else 3
    assert one.final_step % k
    many = epoch(k, "epochk")
    assert many.data_exhausted and many.final_step == one.final_step
    a = [(m["step"], m["loss"]) for m in one.metrics]
    b = [(m["step"], m["loss"]) for m in many.metrics]
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([x for _, x in b], [x for _, x in a], rtol=1e-5, atol=1e-6)


def test_bad_steps_per_call_is_refused_naming_the_field():
    for bad, why in ((0, "must be positive"), (-2, "must be positive"), (2.5, ""), ("4", "")):
        cfg = small_config().to_dict()
        cfg["train"]["steps_per_call"] = bad
        with pytest.raises(setup.C.ConfigError) as e:
            setup.parse_run_config(cfg)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("train.steps_per_call"), msg
        assert why in msg


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_steps_per_call_keeps_the_nonfinite_guard_per_step(tmp_path, smoke_data, mode):
    """The non-finite guard inside a group sees every step: the same rows, the same error
    naming the same first bad step ("stop"), the same skipped counts ("skip") as 1."""
    from jaxknow.train.guard import NonFiniteError

    out = {}
    for k in (1, 4):
        cfg = _steps_per_call_config(
            smoke_data, 8, log_every=1, steps_per_call=k, nonfinite=mode, max_skipped=100
        )
        cfg.optim.lr = 1e30
        w = tmp_path / f"k{k}"
        try:
            res = loop.train(cfg, w)
            err = None
        except NonFiniteError as e:
            res, err = None, str(e)
        out[k] = (err, _rows(w), res.skipped_updates if res else None)
    assert out[1][0] == out[4][0]
    assert (out[1][0] is not None) == (mode == "stop")
    assert len(out[1][1]) == len(out[4][1]) > 0
    for a, b in zip(out[1][1], out[4][1]):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6, nan_ok=True), key
            else:
                assert b[key] == a[key], key
    if mode == "skip":
        assert out[1][2] == out[4][2] > 0


def test_steps_per_call_acts_on_sigterm_at_the_end_of_the_group_and_resumes_exactly(
    tmp_path, smoke_data, monkeypatch
):
    """A SIGTERM arriving while a group's batches are read is acted on after that call: the
    run saves the group's last step (every batch read is trained on) and stops; the same
    command resumes it to the uninterrupted run's losses."""
    import os

    from jaxknow.io.checkpoint import Checkpointer

    full = loop.train(_steps_per_call_config(smoke_data, 12, log_every=1), tmp_path / "one")
    cfg = _steps_per_call_config(smoke_data, 12, log_every=1, steps_per_call=4)
    real = loop.make_iterator

    def signalling(*args, **kw):
        it = real(*args, **kw)

        class Wrapped:
            n = 0

            def __next__(self):
                self.n += 1
                if self.n == 6:
                    os.kill(os.getpid(), signal.SIGTERM)
                return next(it)

            def __getattr__(self, name):
                return getattr(it, name)

        return Wrapped()

    monkeypatch.setattr(loop, "make_iterator", signalling)
    stopped = loop.train(cfg, tmp_path / "w")
    monkeypatch.undo()
    assert stopped.preempted and stopped.final_step == 8
    assert Checkpointer(tmp_path / "w" / "checkpoints", read_only=True).all_steps() == [8]
    rest = loop.train(cfg, tmp_path / "w")
    assert rest.start_step == 8 and rest.final_step == 12
    la = {m["step"]: m["loss"] for m in full.metrics}
    lb = {m["step"]: m["loss"] for m in (*stopped.metrics, *rest.metrics)}
    assert sorted(lb) == list(range(1, 13))
    for s in lb:
        assert lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6), s
