"""Fault injection on training runs: damaged checkpoints, non-finite steps, signals, locks,
changed configs on resume, torn metrics. In-process runs of a 4-step smoke model sharing one
materialised data directory (see tests/test_reliability_inputs.py for the entry points)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from configs.smoke import get_config
from jaxknow.data import build
from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.io import integrity
from jaxknow.io.checkpoint import Checkpointer, CheckpointError
from jaxknow.io.metrics import read_metrics
from jaxknow.model.lora import full_specs
from jaxknow.model.sharded import abstract_params
from jaxknow.train import loop, setup
from jaxknow.train.guard import NonFiniteError


def _config(data_dir, steps=4, **train):
    c = get_config()
    c.train.update(
        dict(
            dict(
                steps=steps,
                log_every=1,
                checkpoint_every=2,
                keep_checkpoints=3,
                progress=False,
                tensorboard=False,
            ),
            **train,
        )
    )
    c.optim.warmup_steps = 2
    c.optim.total_steps = 8  # one schedule (one compiled step) for every run length
    c.data.dir = str(data_dir)
    return c


@pytest.fixture(scope="module")
def data_dir(smoke_data):
    return smoke_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A workdir trained 4 steps with checkpoints at 2 and 4, and its losses."""
    w = tmp_path_factory.mktemp("trained") / "w"
    res = loop.train(_config(data_dir), w)
    assert res.final_step == 4
    losses = {r["step"]: r["loss"] for r in read_metrics(w / "metrics.jsonl")}
    assert sorted(losses) == [1, 2, 3, 4]
    return w, losses


@pytest.fixture
def workdir(trained, tmp_path):
    """A private copy of the trained workdir."""
    w = tmp_path / "w"
    shutil.copytree(trained[0], w)
    return w


def _a_data_file(step_dir):
    files = sorted(
        (p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    return files[-1]  # the biggest: array data


def _garble(p):
    b = bytearray(p.read_bytes())
    n = min(4096, len(b) // 2)
    b[len(b) // 4 : len(b) // 4 + n] = b"\x55" * n
    p.write_bytes(bytes(b))


def _bitflip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage,said",
    [
        (_garble, "fails its sha256 checksum"),
        (_bitflip, "fails its sha256 checksum"),
        (_truncate, "bytes, the manifest says"),
        (os.remove, "is missing"),
    ],
)
def test_every_kind_of_file_damage_is_detected_naming_the_file(workdir, damage, said):
    step_dir = workdir / "checkpoints" / "4"
    assert integrity.verify(step_dir) is None
    target = _a_data_file(step_dir)
    damage(target)
    why = integrity.verify(step_dir)
    assert why is not None and said in why and str(target) in why
    # A read-only restore of that step refuses instead of loading damaged arrays.
    spec = setup.parse_run_config(get_config())
    with pytest.raises(CheckpointError, match="is damaged"):
        setup.load_params(
            step_dir, full_specs(spec.model, spec.lora), np.float32, setup.build_mesh(spec)
        )


def test_garbled_newest_checkpoint_is_set_aside_and_the_run_falls_back(
    workdir, trained, data_dir, caplog
):
    _garble(_a_data_file(workdir / "checkpoints" / "4"))
    res = loop.train(_config(data_dir, steps=6), workdir)
    # Resumed from the intact step 2 (not the damaged 4), and the trajectory is the same.
    assert res.start_step == 2 and res.final_step == 6
    losses = {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl")}
    assert sorted(losses) == list(range(1, 7))
    for s in (3, 4):
        assert losses[s] == pytest.approx(trained[1][s], rel=1e-6), s
    aside = list((workdir / "checkpoints" / "damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("4-")
    assert "fails its sha256 checksum" in caplog.text and str(aside[0]) in caplog.text
    assert all(np.isfinite(r["loss"]) for r in read_metrics(workdir / "metrics.jsonl"))


def test_checkpoint_without_manifest_is_not_trusted_when_an_intact_one_exists(workdir, data_dir):
    (workdir / "checkpoints" / "4" / integrity.MANIFEST).unlink()  # killed before it
    res = loop.train(_config(data_dir, steps=4), workdir)
    assert res.start_step == 2 and res.final_step == 4
    assert Checkpointer(workdir / "checkpoints").verify(4) is None  # re-saved intact


def test_resume_step_picks_the_named_step_and_sets_newer_ones_aside(workdir, data_dir):
    with pytest.raises(CheckpointError, match=r"resume_step=3.*available: \[2, 4\]"):
        loop.train(_config(data_dir, resume_step=3), workdir)
    res = loop.train(_config(data_dir, resume_step=2), workdir)
    assert res.start_step == 2 and res.final_step == 4
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints" / "damaged").iterdir()] == ["4"]


def test_no_intact_checkpoint_is_refused_naming_each(workdir, data_dir):
    for s in (2, 4):
        _bitflip(_a_data_file(workdir / "checkpoints" / str(s)))
    with pytest.raises(CheckpointError) as e:
        loop.train(_config(data_dir), workdir)
    assert "no intact checkpoint" in str(e.value)
    for s in (2, 4):
        assert str(workdir / "checkpoints" / str(s)) in str(e.value)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


def _tiny_tree(v):
    return {"w": np.full((4, 4), v, np.float32)}


def test_rotation_never_deletes_the_last_intact_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "c", keep=1)
    ckpt.save(1, _tiny_tree(1.0), None, {})
    ckpt.wait()
    assert ckpt.verify(1) is None

    def full_disk(step_dir, step):
        raise OSError(28, "No space left on device", str(step_dir))

    monkeypatch.setattr(integrity, "write_manifest", full_disk)
    ckpt.save(2, _tiny_tree(2.0), None, {})
    with pytest.raises(CheckpointError, match=r"saving checkpoint .*/2 failed: .*No space"):
        ckpt.wait()
    # Step 2 is not intact, so step 1 (the last intact one) is kept.
    assert ckpt.all_steps() == [1, 2] and ckpt.verify(1) is None
    monkeypatch.undo()
    ckpt.save(3, _tiny_tree(3.0), None, {})
    ckpt.close()
    assert Checkpointer(tmp_path / "c").all_steps() == [3]


def test_a_kill_during_rotation_never_leaves_a_half_deleted_step_listed(tmp_path, monkeypatch):
    from jaxknow.io import checkpoint

    ckpt = Checkpointer(tmp_path / "c", keep=1)
    ckpt.save(1, _tiny_tree(1.0), None, {})
    ckpt.wait()
    real_rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        # delete one file of the step (orbax's metadata), then die as a kill -9 would
        victim = next(p for p in Path(path).rglob("_CHECKPOINT_METADATA"))
        victim.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    ckpt.save(2, _tiny_tree(2.0), None, {})  # its finisher rotates step 1 away
    ckpt._finisher.join()
    assert isinstance(ckpt._error, KeyboardInterrupt)
    ckpt._error = None
    ckpt.close()
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    fresh = Checkpointer(tmp_path / "c")
    assert fresh.all_steps() == [2], "a half-deleted step is still listed"
    assert fresh.verify(2) is None and fresh.resume_step() == 2
    # the next rotation also removes what the killed deletion left in the trash
    fresh.keep = 1
    fresh.save(3, _tiny_tree(3.0), None, {})
    fresh.close()
    assert fresh.all_steps() == [3]
    assert not (tmp_path / "c" / checkpoint.TRASH).exists()


def test_failed_background_save_is_reported_at_the_next_step(tmp_path, data_dir, monkeypatch):
    def broken(step_dir, step):
        raise OSError(30, "Read-only file system", str(step_dir))

    monkeypatch.setattr(integrity, "write_manifest", broken)
    seen = []

    def slow_event(step, state):
        seen.append(step)
        if step == 3:  # give the background thread of step 2's save time to fail
            import time

            time.sleep(2)
        return state

    with pytest.raises(CheckpointError, match=r"checkpoints/2 failed: OSError.*Read-only"):
        loop.train(
            _config(data_dir, steps=8, checkpoint_every=2), tmp_path / "w", events=[slow_event]
        )
    assert max(seen) <= 4  # reported within a step, not at the next save or the end


def test_nonfinite_loss_stops_naming_the_step_and_is_never_checkpointed(tmp_path, data_dir):
    w = tmp_path / "w"
    c = _config(data_dir, steps=8, log_every=100)
    c.optim.lr = 1e30
    with pytest.raises(NonFiniteError) as e:
        loop.train(c, w)
    bad = int(re.search(r"non-finite training at step (\d+)", str(e.value)).group(1))
    steps = Checkpointer(w / "checkpoints").all_steps()
    assert all(s < bad for s in steps)
    if steps:
        assert f"newest checkpoint is step {steps[-1]}" in str(e.value)
        ckpt = Checkpointer(w / "checkpoints", read_only=True)
        spec = setup.parse_run_config(c)
        mesh = setup.build_mesh(spec)
        out = ckpt.restore(
            abstract_params(full_specs(spec.model, spec.lora), np.float32, mesh), None, steps[-1]
        )
        assert all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(out["params"]))


@pytest.mark.slow
def test_nonfinite_updates_can_be_skipped(tmp_path, data_dir):
    c = _config(data_dir, steps=8, halt_at=6, nonfinite="skip")
    c.optim.lr = 1e30
    res = loop.train(c, tmp_path / "w")
    assert res.final_step == 6 and res.skipped_updates > 0
    assert all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(res.state.params))
    rows = read_metrics(tmp_path / "w" / "metrics.jsonl")
    assert rows[-1]["skipped_updates"] == res.skipped_updates
    c.train.max_skipped = 0
    c.train.halt_at = None
    with pytest.raises(NonFiniteError, match="more than train.max_skipped=0"):
        loop.train(c, tmp_path / "w")


def test_halt_on_a_checkpoint_step_saves_once_and_reports_that_steps_loss(tmp_path, data_dir):
    res = loop.train(_config(data_dir, steps=4, halt_at=2, log_every=100), tmp_path / "w")
    assert res.halted and res.final_step == 2
    assert Checkpointer(tmp_path / "w" / "checkpoints").all_steps() == [2]
    assert res.metrics[-1]["step"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_on_a_checkpoint_step_saves_once_and_stops(tmp_path, data_dir, sig):
    def send(step, state):
        if step == 2:
            os.kill(os.getpid(), sig)
        return state

    before = signal.getsignal(sig)
    res = loop.train(_config(data_dir, steps=6, log_every=100), tmp_path / "w", events=[send])
    assert res.final_step == 2
    assert (res.interrupted, res.preempted) == (
        (True, False) if sig == signal.SIGINT else (False, True)
    )
    assert Checkpointer(tmp_path / "w" / "checkpoints").all_steps() == [2]
    assert res.metrics[-1]["step"] == 2
    assert signal.getsignal(sig) is before


def test_empty_workdir_is_refused_and_nothing_is_written(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(setup.WorkdirError, match="--workdir is empty"):
        loop.train(_config(data_dir), "")
    assert list(tmp_path.iterdir()) == []


def test_one_run_per_workdir_and_stale_locks_are_recovered(tmp_path, data_dir, caplog):
    w = tmp_path / "w"
    with (
        setup.workdir_lock(w),
        pytest.raises(setup.WorkdirError, match=rf"in use by another run .*pid {os.getpid()}"),
    ):
        loop.train(_config(data_dir), w)
    assert not (w / "config.json").exists()
    (w / setup.LOCK_NAME).write_text("host elsewhere pid 999999999\n")  # a dead run's lock
    res = loop.train(_config(data_dir, steps=4), w)
    assert res.final_step == 4 and "stale lock" in caplog.text


@pytest.mark.parametrize(
    "override,named",
    [
        (("model", "d_model", 128), "model.d_model (recorded 64, now 128)"),
        (("data", "world", None), "data.world.num_people (recorded 200, now 100)"),
    ],
)
def test_resume_with_changed_model_or_world_is_refused_before_writing(
    workdir, data_dir, override, named
):
    before = (workdir / "config.json").read_bytes()
    c = _config(data_dir, steps=6)
    if override[0] == "model":
        c.model.d_model = 128
    else:
        c.data.world.num_people = 100
    with pytest.raises(setup.WorkdirError, match=re.escape(named)):
        loop.train(c, workdir)
    assert (workdir / "config.json").read_bytes() == before
    assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 4]


def test_data_with_another_tokenizer_is_refused_before_writing(workdir, data_dir):
    # As if the data directory had been re-materialised with other text since this run
    # trained: its token ids would mean other words.
    own = workdir / "tokenizer.json"
    trained_with = json.loads(own.read_text())
    trained_with["added_tokens"] = [*trained_with.get("added_tokens", []), {"id": -1}]
    own.write_text(json.dumps(trained_with))
    before = own.read_bytes()
    with pytest.raises(setup.WorkdirError, match=r"tokenizer\.json differs from .*re-materialised"):
        loop.train(_config(data_dir, steps=6), workdir)
    assert own.read_bytes() == before
    assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 4]


def test_data_built_from_another_world_is_refused(tmp_path, data_dir):
    c = _config(data_dir)
    c.data.world.num_people = 100
    with pytest.raises(
        build.WorldConfigError,
        match=r"data.world.num_people \(data has 200, "
        r"config 100\)",
    ):
        loop.train(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_rejected_run_does_not_touch_config_json(workdir, data_dir):
    before = (workdir / "config.json").read_bytes()
    with pytest.raises(ValueError, match="train.grad_accum=3 does not divide"):
        loop.train(_config(data_dir, grad_accum=3), workdir)
    assert (workdir / "config.json").read_bytes() == before


def test_torn_last_metrics_line_is_repaired_on_resume(workdir, data_dir, caplog):
    metrics = workdir / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 5, "lo')  # a write cut off by a kill
    res = loop.train(_config(data_dir, steps=6), workdir)
    assert res.final_step == 6
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, 7))
    assert "torn last line" in caplog.text and "metrics.jsonl:5" in caplog.text


def test_malformed_metrics_line_in_the_middle_names_file_and_line(workdir, data_dir):
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = '{"step": 2, oops'
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusFormatError, match=rf"{re.escape(str(metrics))}:2: malformed"):
        loop.train(_config(data_dir, steps=6), workdir)


def test_config_and_tokenizer_are_written_atomically(tmp_path, data_dir, monkeypatch):
    # A failing write (full disk) leaves the previous config.json, not a 0-byte file.
    w = tmp_path / "w"
    loop.train(_config(data_dir, steps=2), w)
    before = (w / "config.json").read_bytes()
    assert json.loads(before)["train"]["steps"] == 2
    assert (w / "tokenizer.json").read_bytes() == (data_dir / "tokenizer.json").read_bytes()

    real = type(w).write_text

    def fail_config(self, *a, **k):
        if self.name.startswith(".config.json"):
            raise OSError(28, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(type(w), "write_text", fail_config)
    with pytest.raises(OSError, match="No space"):
        loop.train(_config(data_dir, steps=4), w)
    assert (w / "config.json").read_bytes() == before
    assert not [p for p in w.iterdir() if p.name.endswith(".tmp")]


def _wait_for_rows(proc, metrics, n, timeout=240):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    raise AssertionError("the run did not log in time")


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    from tests.util import popen_module

    proc = popen_module(
        "launch.train",
        "--config=configs/smoke.py",
        f"--workdir={tmp_path}",
        "--config.train.steps=100000",
        "--config.train.log_every=1",
        "--config.train.progress=False",
        "--config.train.tensorboard=False",
    )
    _wait_for_rows(proc, tmp_path / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    step = int(out.split("interrupted: step")[1].split(",")[0])
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [step] and ckpt.verify(step) is None


@pytest.mark.slow
def test_kill9_during_saves_never_leaves_an_untrusted_newest_checkpoint(tmp_path):
    """Kill -9 at varied moments of a run that saves every step; every restart resumes from an
    intact step and the finished run's losses match an uninterrupted run."""
    import time

    from tests.util import popen_module, run_module

    args = (
        "--config=configs/smoke.py",
        "--config.train.steps=12",
        "--config.train.checkpoint_every=1",
        "--config.train.log_every=1",
        "--config.train.progress=False",
        "--config.train.tensorboard=False",
        "--config.optim.warmup_steps=2",
    )
    ref = run_module("launch.train", *args, f"--workdir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-2000:]
    w = tmp_path / "w"
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = popen_module(
            "launch.train",
            *args,
            f"--workdir={w}",
            "--config.data.dir=" + str(tmp_path / "ref" / "data"),
        )
        if (w / "metrics.jsonl").exists():
            time.sleep(float(rng.uniform(4, 8)))
        else:
            _wait_for_rows(proc, w / "metrics.jsonl", 2)
            time.sleep(float(rng.uniform(0, 0.5)))
        proc.kill()
        proc.communicate()
        steps = Checkpointer(w / "checkpoints").all_steps()
        if steps:  # whatever orbax finalised is either intact or set aside on resume
            assert all(
                Checkpointer(w / "checkpoints").verify(s) in (None,) or s == steps[-1]
                for s in steps
            )
    done = run_module(
        "launch.train",
        *args,
        f"--workdir={w}",
        "--config.data.dir=" + str(tmp_path / "ref" / "data"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ref" / "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in read_metrics(w / "metrics.jsonl")}
    assert sorted(b) == sorted(a) == list(range(1, 13))
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-6), s
