"""The benchmark tools (benchmarks/): their parsing and bookkeeping (fast), and tiny end-to-end
runs of the GPU suite's dry run, bench_depth, bench_loop and bench_train's side-by-side mode
(slow: each starts several processes that compile)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_attention  # noqa: E402
import bench_train  # noqa: E402
import gpu_suite  # noqa: E402

ANCHOR_GPU_LINE = (
    "torch 2.13.0 params 124.4M batch 96 seq 512 compile True: 142.1 ms/step, "
    "345,912 tokens/s, MFU 28.0% (H100 peak 989 TFLOP/s), peak mem 21.4 GiB, "
    "loss 10.901"
)


def _args(**over):
    base = dict(
        model="",
        batch=4,
        seq_len=32,
        loss_chunk=0,
        grad_accum=1,
        lora=0,
        dtype="float32",
        remat="none",
        preset="tiny",
        ref=None,
        cpu_devices="",
        xla_flags=[],
        variant=[],
    )
    base.update(over)
    return argparse.Namespace(**base)


def test_parse_variant_keeps_xla_flags_text_and_types_values():
    v = bench_train.parse_variant(
        "scan_layers=true,d_model=128,remat=none,xla_flags=--xla_cpu_use_thunk_runtime=false"
    )
    assert v == {
        "scan_layers": True,
        "d_model": 128,
        "remat": "none",
        "xla_flags": "--xla_cpu_use_thunk_runtime=false",
    }


def test_variants_split_model_run_and_process_levers():
    args = _args(
        model="d_model=128,n_layers=4",
        cpu_devices="1,2",
        xla_flags=["--xla_cpu_enable_fast_math=true"],
        variant=["batch=8,scan_layers=true"],
    )
    rows = bench_train.build_variants(args)
    assert [r.label for r in rows] == [
        "base",
        "cpu_devices=1",
        "cpu_devices=2",
        "xla_flags=--xla_cpu_enable_fast_math=true",
        "batch=8,scan_layers=true",
    ]
    base, one, _, fast, scan = rows
    assert base.fields["d_model"] == 128 and not base.needs_process
    assert one.env == {"cpu_devices": 1} and one.needs_process
    assert fast.env == {"xla_flags": "--xla_cpu_enable_fast_math=true"}
    assert scan.run["batch"] == 8 and scan.fields["scan_layers"] is True
    assert not scan.needs_process and scan.fields["n_layers"] == 4


def test_worker_env_replaces_the_device_count(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    v = bench_train.Variant("x", "tiny", {}, {}, {"cpu_devices": 1, "xla_flags": "--xla_bar=2"})
    flags = bench_train.worker_env(v)["XLA_FLAGS"].split()
    assert flags == ["--xla_foo=1", "--xla_force_host_platform_device_count=1", "--xla_bar=2"]


def test_summarize_takes_per_round_ratios_and_medians():
    vs = [bench_train.Variant(n, "tiny", {}, {"batch": 1, "seq_len": 1}) for n in ("a", "b")]
    w = [
        [
            {"tokens_per_s": t, "ms_per_step": 1.0, "mfu": None, "peak_bytes": None, "loss": 1.0}
            for t in ts
        ]
        for ts in ([100, 200, 300], [300, 200, 900])
    ]
    rows = bench_train.summarize(vs, [{}, {}], w, [100, 400, 300])
    assert rows[1]["vs_torch_rounds"] == [3.0, 0.5, 3.0] and rows[1]["vs_torch"] == 3.0
    assert rows[1]["vs_first"] == 3.0 and rows[0]["vs_first"] == 1.0
    assert rows[1]["tokens_per_s"] == 300
    # every variant failed: no rows (main then says so), not an IndexError
    assert bench_train.summarize([], [], [], [100]) == []


def test_torch_cpu_args_follow_the_model():
    from jaxknow.model.config import preset

    cfg = preset("tiny", d_model=128, d_ff=512, n_layers=4, n_heads=4, vocab_size=1024)
    argv = bench_train.torch_cpu_args(cfg, {"batch": 64, "seq_len": 128}, 10, False)
    assert argv == [
        "--batch",
        "64",
        "--seq",
        "128",
        "--d",
        "128",
        "--layers",
        "4",
        "--heads",
        "4",
        "--vocab",
        "1024",
        "--steps",
        "10",
    ]


def test_suite_parses_the_anchor_and_fills_ratios():
    anchor = gpu_suite.parse_anchor("noise\n" + ANCHOR_GPU_LINE + "\n")
    assert anchor.rate == 345_912 and anchor.mfu == pytest.approx(0.28)
    assert anchor.peak_gib == 21.4 and "compile" in anchor.what
    rows = [
        anchor,
        gpu_suite.Row("gpt2", "a", rate=553_459.2),
        gpu_suite.Row("gpt2", "b", rate=400_000),
        gpu_suite.Row("pipeline", "p", rate=2_767_296),
    ]
    gpu_suite.add_ratios(rows)
    assert rows[1].ratio == pytest.approx(1.6) and rows[2].ratio_to == "anchor"
    assert rows[3].ratio == pytest.approx(5.0)
    table = gpu_suite.markdown_table(rows, "title").splitlines()
    assert len([ln for ln in table if ln.startswith("| ")]) == 5
    assert "1.60x vs anchor" in table[5] and "28.0%" in table[4]


def test_suite_train_rows_keep_failed_variants():
    data = {
        "rows": [
            {
                "label": "base",
                "batch": 96,
                "seq_len": 512,
                "tokens_per_s": 5e5,
                "mfu": 0.4,
                "peak_bytes": 2**31,
                "compile_s": 30.0,
            }
        ],
        "failed": ["RuntimeError: variant 'remat=dots': worker exited (1):\nOOM"],
    }
    ok, bad = gpu_suite.train_rows("gpt2", "jaxknow", data)
    assert ok.what == "jaxknow 96x512 [base]" and ok.peak_gib == 2.0 and ok.rate == 5e5
    assert bad.rate is None and "remat=dots" in bad.note and "\n" not in bad.note


def test_suite_budgets_fit_a_ten_minute_command(tmp_path):
    pieces = gpu_suite.make_pieces(False)
    assert [p.name for p in pieces] == [
        "anchor",
        "gpt2",
        "llama-1b",
        "generation",
        "smollm2-full",
        "smollm2-lora",
        "smollm2-gen",
        "pipeline",
        "quickstart",
    ]
    assert sum(p.budget_s for p in pieces) <= 580
    assert "--lora" in pieces[5].argv(tmp_path / "x") and "smollm2-135m" in pieces[4].argv(
        tmp_path / "x"
    )
    for p in pieces[1:]:  # every script a piece runs exists and takes its flags
        argv = p.argv(tmp_path / p.name)
        if argv[1].endswith(".py"):
            assert Path(argv[1]).is_file(), argv


def test_quickstart_rows_read_the_pretraining_metrics(tmp_path):
    for cond, rates in (("single", [1.0, 100.0, 300.0]), ("multi", [1.0, 200.0])):
        d = tmp_path / f"pretrain_{cond}"
        d.mkdir()
        (d / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"step": i, "loss": 1.0, "tokens_per_s": r}) + "\n"
                for i, r in enumerate(rates)
            )
        )
    (row,) = gpu_suite.quickstart_rows(tmp_path, 300)
    assert row.rate == 200.0 and row.note == "results.json missing"


def _run(script: str, *args: str, timeout: float = 1800) -> str:
    env_cmd = [sys.executable, str(REPO / "benchmarks" / script), *args]
    proc = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path):
    rows = gpu_suite.main(
        [
            "--dry_run",
            "--budget",
            "1500",
            "--budget_scale",
            "4",
            "--logdir",
            str(tmp_path),
            "--out",
            str(tmp_path / "t.md"),
        ]
    )
    by_piece = {r.piece: r for r in rows}
    assert set(by_piece) == {
        "anchor",
        "gpt2",
        "llama-1b",
        "generation",
        "smollm2-full",
        "smollm2-lora",
        "smollm2-gen",
        "pipeline",
        "quickstart",
    }
    assert by_piece["smollm2-lora"].ratio_to == "smollm2 full finetune"
    for r in rows:
        assert r.rate and r.rate > 0 and "fail" not in r.note and "timed out" not in r.note, r
    assert [r.ratio_to for r in rows if r.piece == "gpt2"] == ["anchor", "anchor"]
    assert (tmp_path / "t.md").read_text().count("\n| ") == len(rows) + 1


@pytest.mark.slow
def test_bench_depth_tiny(tmp_path):
    out = _run(
        "bench_depth.py",
        "--layers",
        "2,4",
        "--batch",
        "2",
        "--seq_len",
        "16",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--deep_layers",
        "8",
        "--deep_seq_len",
        "16",
        "--json",
        str(tmp_path / "d.json"),
    )
    data = json.loads((tmp_path / "d.json").read_text())
    assert [(r["scan_layers"], r["layers"]) for r in data["rows"]] == [
        (False, 2),
        (False, 4),
        (True, 2),
        (True, 4),
    ]
    assert [r["use_scan"] for r in data["rows"]] == [False, False, True, True]
    assert data["deep"]["ok"] and data["deep"]["layers"] == 8
    assert "scan_layers=True: 4/2 layers" in out


@pytest.mark.slow
def test_bench_loop_tiny(tmp_path):
    _run(
        "bench_loop.py",
        "--steps",
        "12",
        "--set",
        "train.log_every=3",
        "--set",
        "data.batch_size=8",
        "--set",
        "data.seq_len=32",
        "--set",
        "model.n_layers=1",
        "--bare_steps",
        "3",
        "--pipeline_batches",
        "5",
        "--json",
        str(tmp_path / "l.json"),
    )
    data = json.loads((tmp_path / "l.json").read_text())
    # logged at steps 1, 3, 6, 9, 12: tokens/s from step 3 on, the first dropped
    assert len(data["loop_rows"]) == 3
    assert data["loop_tokens_per_s"] == pytest.approx(sorted(data["loop_rows"])[1])
    assert data["ratio"] == pytest.approx(data["loop_tokens_per_s"] / data["step_tokens_per_s"])
    assert data["pipeline_tokens_per_s"] > 0 and data["pipeline_share_of_step"] > 0


@pytest.mark.slow
def test_bench_train_side_by_side_with_torch_and_a_worker(tmp_path):
    out = _run(
        "bench_train.py",
        "--preset",
        "tiny",
        "--dtype",
        "float32",
        "--batch",
        "4",
        "--seq_len",
        "16",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--torch_baseline",
        "cpu",
        "--torch_steps",
        "1",
        "--repeats",
        "2",
        "--cpu_devices",
        "1",
        "--json",
        str(tmp_path / "t.json"),
    )
    data = json.loads((tmp_path / "t.json").read_text())
    assert len(data["torch"]) == 2 and all(t and t > 0 for t in data["torch"])
    assert [r["label"] for r in data["rows"]] == ["base", "cpu_devices=1"]
    assert data["rows"][1]["n_devices"] == 1
    assert all(len(r["vs_torch_rounds"]) == 2 for r in data["rows"])
    assert "round 2:" in out


def test_export_commit_holds_that_commits_package():
    root = bench_train.export_commit("HEAD")
    head = subprocess.run(
        ["git", "-C", str(REPO), "show", "HEAD:jaxknow/model/config.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (root / "jaxknow" / "model" / "config.py").read_text() == head
    assert (root / "launch" / "__init__.py").is_file()
    shutil.rmtree(root)


def test_bench_loop_config_wrapper_sets_fields_whose_default_is_none(tmp_path):
    import importlib.util

    import bench_loop

    over = {**bench_loop.QUICKSTART_OVERRIDES, "train.steps": 7}
    path = bench_loop.write_config(str(REPO / "configs" / "smoke.py"), over, tmp_path / "c.py")
    spec = importlib.util.spec_from_file_location("wrapped", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.model.pos_embedding == "rope" and c.model.d_model == 128
    assert c.train.steps == 7 and c.data.batch_size == 32


def test_bench_steps_per_call_builds_the_quickstart_pretraining_run(tmp_path):
    import bench_steps_per_call as spc

    from configs.bios.quickstart import get_config

    qs = get_config()
    run = spc.quickstart_config()
    assert run.model.d_model == qs.model.d_model and run.model.n_layers == qs.model.n_layers
    assert run.data.batch_size == qs.pretrain.batch_size and run.train.steps == qs.pretrain.steps
    loop = spc.loop_config(12, 4, str(tmp_path))
    assert loop.train.steps == 12 and loop.train.steps_per_call == 4
    assert loop.data.dir == str(tmp_path) and loop.data.sources == ({"name": "bios_single"},)
    assert loop.data.world["vocab_size"] == run.model.vocab_size


def test_bench_attention_tiny():
    """bench_attention times every block setting at every length, rows in order, and the
    blocked forward agrees with one block."""
    rows = bench_attention.main(
        [
            "--preset",
            "tiny-llama",
            "--layers",
            "2",
            "--tokens",
            "64",
            "--seq_lens",
            "16,32",
            "--blocks",
            "0,8",
            "--repeats",
            "1",
        ]
    )
    assert [(r["seq_len"], r["batch"], r["block"]) for r in rows] == [
        (16, 4, 0),
        (16, 4, 8),
        (32, 2, 0),
        (32, 2, 8),
    ]
    assert all(r["ms_per_layer"] > 0 and r["max_abs_diff"] < 1e-4 for r in rows)
    assert rows[0]["ratio"] == 1.0
