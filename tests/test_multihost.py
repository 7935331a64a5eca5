"""Two JAX processes on this machine (4 simulated CPU devices each, gloo collectives) train
the smoke config with data and fsdp axes spanning both, checkpoint, resume, and match a
single-process run with the same mesh and data shards; and evaluate (generation, scoring,
probing) a model sharded over both, matching a single-process evaluation on the same mesh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxknow.io.metrics import read_metrics
from tests.util import REPO, numpy_params, run_module

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


def _in_two_processes(module: str, *args: str) -> list[subprocess.CompletedProcess]:
    """Runs `python -m module args...` as process 0 and 1 of one jax.distributed job."""
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
                [sys.executable, "-m", module, *args],
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


def _two_processes(workdir, *extra: str) -> list[subprocess.CompletedProcess]:
    return _in_two_processes("launch.train", f"--workdir={workdir}", *ARGS, *extra)


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
    # the rest two steps per call (steps 4-5 in one, 6 alone): batches stacked per process
    second = _two_processes(tmp_path / "multi", "--config.train.steps_per_call=2")
    for r in second:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "done: step 6" in r.stdout
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "multi" / "metrics.jsonl")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5), s


def _tiny_model(root) -> str:
    """Writes a random 2-layer GPT-2-like model with a small BPE tokenizer under `root`."""
    from jaxknow.data.tokenizer import train_bpe
    from jaxknow.io.checkpoint import save_params_checkpoint
    from jaxknow.model.config import preset

    texts = [
        f"The capital of {c} is {t}. Its animal is the {a}.\n"
        for c in ("Arvia", "Belmor", "Corrin", "Dastia")
        for t in ("Vell", "Norra", "Dast")
        for a in ("fox", "owl")
    ]
    tok = train_bpe(texts * 4, vocab_size=300)
    # a larger init than the default: peaked logits, so greedy choices are not near-ties
    cfg = preset("tiny", vocab_size=tok.vocab_size, n_layers=2, init_std=0.2)
    save_params_checkpoint(root, numpy_params(cfg), {"model": cfg.to_dict()})
    tok.save(root)
    return str(root)


@pytest.mark.slow
def test_evaluation_on_two_processes_matches_one_process(tmp_path):
    """scripts/multihost_eval_check.py on a (data=2, fsdp=4) mesh: 2 processes x 4 devices
    give the generated text, log-probs, features and probe accuracies of 1 process x 8."""
    model = _tiny_model(tmp_path / "model")
    module = "scripts.multihost_eval_check"
    single = run_module(module, model, str(tmp_path / "single.json"), "--data=2", "--fsdp=4")
    assert single.returncode == 0, single.stderr[-3000:]
    for r in _in_two_processes(module, model, str(tmp_path / "multi.json"), "--data=2", "--fsdp=4"):
        assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "single.json").read_text())
    b = json.loads((tmp_path / "multi.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert a["devices"] == b["devices"] == 8
    exact = ("generated", "generated_no_newline_stop", "counts", "greedy", "next_token_hits")
    for key in exact + ("features_shape", "probe_acc", "embedding_probe_acc"):
        assert b[key] == a[key], key
    assert b["mc"]["pred"] == a["mc"]["pred"]
    assert b["mc"]["acc"] == a["mc"]["acc"]
    assert b["logprobs"] == pytest.approx(a["logprobs"], rel=1e-5)
    for x, y in zip(b["mc"]["logprobs"], a["mc"]["logprobs"]):
        assert x == pytest.approx(y, rel=1e-5)
    assert b["features_sum"] == pytest.approx(a["features_sum"], rel=1e-5)
    assert b["features_head"] == pytest.approx(a["features_head"], rel=1e-5, abs=1e-6)
    # the adapters are trained by backpropagation through the sharded model (gloo reductions)
    for k, v in a["adapter_sums"].items():
        assert b["adapter_sums"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # not a trivial probe: the city is read at its own token
    assert max(max(row) for row in a["probe_acc"]) == 1.0
