"""Every bad input or environment fault is one line naming the file, line, field or path, exit
2, no traceback (unless --verbosity=1): entry points in fresh processes, readers in-process."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jaxknow.data import pipeline, records
from jaxknow.data.jsonl import CorpusFormatError, read_jsonl, write_jsonl
from jaxknow.data.tokenizer import TokenizerError, train_bpe
from jaxknow.eval.tasks import load_subsets
from jaxknow.io.hf_config import HFConversionError
from jaxknow.io.hf_weights import SafetensorsReader
from launch.evaluate import check_writable
from tests.util import run_module

TRAIN = (
    "launch.train",
    "--config=configs/smoke.py",
    "--config.train.progress=False",
    "--config.train.tensorboard=False",
    "--config.optim.warmup_steps=2",
)


def _one_line_error(r, *needles):
    """Asserts exit 2, one `error:` line on stderr with every needle, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def test_unknown_config_key_is_one_line(tmp_path):
    w = tmp_path / "w"
    _one_line_error(
        run_module(*TRAIN, f"--workdir={w}", "--config.train.nokey=3"),
        "--config.train.nokey",
        "no such field",
    )
    assert not w.exists()


@pytest.mark.slow
def test_train_config_file_errors_are_one_line(tmp_path):
    w = tmp_path / "w"
    _one_line_error(
        run_module("launch.train", "--config=configs/nosuch.py", f"--workdir={w}"),
        "configs/nosuch.py",
        "No such file",
    )
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    _one_line_error(
        run_module("launch.train", f"--config={bad}", f"--workdir={w}"), f"{bad}:1", "SyntaxError"
    )
    _one_line_error(run_module(*TRAIN, "--workdir="), "--workdir is empty")
    assert not w.exists()
    # --verbosity=1 shows the traceback.
    r = run_module(*TRAIN, f"--workdir={w}", "--config.train.nokey=3", "--verbosity=1")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_audit_inputs_are_one_line(tmp_path):
    from launch.audit import audit_files
    from launch.common import one_line

    ok = tmp_path / "facts.jsonl"
    write_jsonl(ok, [{"head": "Ann", "relation": "capital", "tail": "Oslo"}])
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": "Ann capital Oslo"}])
    bad_utf8 = tmp_path / "bad_utf8.jsonl"
    bad_utf8.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    not_obj = tmp_path / "not_obj.jsonl"
    not_obj.write_text('{"head": "a", "relation": "r", "tail": "b"}\n[1, 2]\n')
    cases = [
        ((corpus, tmp_path / "none.jsonl", None, []), ("none.jsonl",)),
        ((corpus, not_obj, None, []), (f"{not_obj}:2", "JSON object")),
        ((corpus, ok, "zzz", []), ("split 'zzz'",)),
        ((corpus, ok, None, ["bad"]), ("--keywords",)),
    ]
    for (c, f, split, kw), needles in cases:
        with pytest.raises(Exception) as e:  # noqa: PT011 - each is checked below
            audit_files(str(c), str(f), split, "text", kw)
        from launch.common import USER_ERRORS

        assert isinstance(e.value, USER_ERRORS), e.value
        for n in needles:
            assert n in one_line(e.value), (n, one_line(e.value))
    assert "true tail favoured" in audit_files(str(corpus), str(ok), None, "text", [])
    # End to end: launch.audit is under run_main (one line, exit 2).
    _one_line_error(
        run_module("launch.audit", f"--corpus={bad_utf8}", f"--facts={ok}"),
        f"{bad_utf8}:2",
        "invalid UTF-8",
    )


def test_memory_plan_refuses_impossible_shapes():
    _one_line_error(
        run_module("launch.memory_plan", "--preset=tiny", "--mesh=1,1,1", "--batch=0"), "--batch=0"
    )


@pytest.mark.slow
def test_memory_plan_refuses_seq_len_beyond_the_model():
    _one_line_error(
        run_module(
            "launch.memory_plan", "--preset=tiny", "--mesh=1,1,1", "--batch=2", "--seq_len=100000"
        ),
        "--seq_len=100000",
        "max_seq_len",
    )


def test_truncated_arecord_shard_names_its_path(tmp_path):
    records.write_source(tmp_path, "docs", [(list(range(200)), 0)] * 400)
    shard = tmp_path / records.read_index(tmp_path, "docs")["files"][0]
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(CorpusFormatError, match=f"{shard}: corrupt or truncated"):
        pipeline.source_datasets(str(tmp_path), ["docs"])


def test_invalid_utf8_in_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": "\xc3("}\n')
    with pytest.raises(CorpusFormatError, match=rf"{p}:3: invalid UTF-8"):
        read_jsonl(p)


def _safetensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
    header, blobs, off = {}, [], 0
    for name, a in arrays.items():
        raw = a.astype(np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(a.shape),
            "data_offsets": [off, off + len(raw)],
        }
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_truncated_safetensors_names_the_file(tmp_path):
    p = tmp_path / "model.safetensors"
    _safetensors(p, {"a": np.ones((4, 29)), "b": np.ones((8, 8))})
    assert SafetensorsReader(tmp_path).read("b").shape == (8, 8)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(HFConversionError, match=rf"{p}: truncated \(tensor 'b'"):
        SafetensorsReader(tmp_path)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("mounting a tmpfs is not allowed here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_evaluate_checks_it_can_write_before_computing(tmpfs):
    w = tmpfs / "w"
    (w / "data").mkdir(parents=True)
    write_jsonl(w / "data" / "qa_test.jsonl", [{"question": "q?", "answer": "a"}])
    (w / "tokenizer.json").write_text("{}")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    # No checkpoint exists: the write check must fail first (before loading or computing).
    _one_line_error(
        run_module("launch.evaluate", "--config=configs/eval/bios_qa.py", f"--workdir={w}"),
        f"{w / 'eval'}",
        "Read-only file system",
        "EROFS",
    )


@pytest.mark.slow
def test_training_into_a_read_only_workdir_is_one_line(tmpfs):
    w = tmpfs / "w"
    w.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    _one_line_error(run_module(*TRAIN, f"--workdir={w}"), f"{w}", "Read-only file system")


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_save_is_one_line(tmpfs, tmp_path):
    # Data elsewhere, the workdir on a 2 MB tmpfs: the first checkpoint (~6 MB) cannot fit.
    data = tmp_path / "data"
    w = tmpfs / "w"
    r = run_module(
        *TRAIN,
        f"--workdir={w}",
        f"--config.data.dir={data}",
        "--config.train.steps=4",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
    )
    line = _one_line_error(r, f"{w / 'checkpoints' / '2'}", "No space left on device")
    assert "saving checkpoint" in line
    assert (w / "config.json").stat().st_size > 0  # written whole (before the disk filled)


def test_check_writable_names_the_directory(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(OSError) as e:
        check_writable(f / "eval")
    assert str(f) in str(e.value)
    check_writable(tmp_path / "new" / "eval")
    assert (tmp_path / "new" / "eval").is_dir()


def test_minor_input_checks(tmp_path):
    # A world vocabulary below the byte-level minimum is refused, not silently raised.
    with pytest.raises(TokenizerError, match=r"vocab_size=10 .* minimum of 258"):
        train_bpe(["some text"], 10)
    # Evaluation subsets name the file line (blank lines counted), not a 0-based row.
    p = tmp_path / "qa.jsonl"
    p.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"line 3: missing field\(s\) \['answer'\]"):
        load_subsets({"qa": p}, {"qa": "free"})
    # An empty source is named.
    records.write_source(tmp_path, "empty", [])
    with pytest.raises(ValueError, match="data source 'empty' .* has no documents"):
        pipeline.source_datasets(str(tmp_path), ["empty"])
    # JSONL outputs get the usual file mode (umask applied), not mkstemp's 0600.
    out = tmp_path / "o.jsonl"
    write_jsonl(out, [{"a": 1}])
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
