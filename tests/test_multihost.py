"""Two JAX processes on this machine (4 simulated CPU devices each, gloo collectives) train
the smoke config with data and fsdp axes spanning both, checkpoint, resume, and match a
single-process run with the same mesh and data shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxknow.io.metrics import read_metrics
from tests.util import REPO, run_module

ARGS = (
    "--config=configs/smoke.py",
    "--config.train.steps=6",
    "--config.train.log_every=1",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=4",
    "--config.data.shards=2",
    "--config.train.progress=False",
    "--config.train.tensorboard=False",
    "--config.optim.warmup_steps=2",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir, *extra: str) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            PYTHONPATH=str(REPO),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *ARGS, *extra],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_two_processes_checkpoint_resume_and_match_one_process(tmp_path):
    single = run_module("launch.train", f"--workdir={tmp_path / 'single'}", *ARGS)
    assert single.returncode == 0, single.stderr[-2000:]
    first = _two_processes(tmp_path / "multi", "--config.train.halt_at=3")
    for r in first:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "halted: step 3" in r.stdout
    ckpt = tmp_path / "multi" / "checkpoints" / "3"
    data_state = json.loads((ckpt / "data" / "metadata").read_text())
    # each process saved its own iterator state, and they differ (disjoint data)
    assert set(data_state) == {"process_0", "process_1"}
    assert data_state["process_0"] != data_state["process_1"]
    second = _two_processes(tmp_path / "multi")
    for r in second:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "done: step 6" in r.stdout
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "multi" / "metrics.jsonl")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5), s
