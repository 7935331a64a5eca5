"""Benchmark: streaming ingestion of a real-text-shaped corpus vs a bare `tokenizers` pass.

Generates a synthetic JSONL corpus of about `--mb` megabytes (Zipf-distributed words,
documents of 8-200 words, ~660 bytes on average like the issue's 133 MB / 200k
documents), trains one byte-level BPE on a 20k-document sample (not timed), then times, each
in a fresh process so that peak RSS is its own:

* ``bare``: read every text into a list, then ``Tokenizer.encode_batch`` over all of them
  in batches of 4096 (the tokenizer's own threads) — the floor for tokenizing these texts;
* ``ingest`` (once per `--workers` value): `jaxknow.data.ingest.ingest_source`, streaming
  the file into ArrayRecord shards.

Peak RSS is ``ru_maxrss`` of the process and of its largest child, plus the largest sum of
the process tree sampled every 50 ms with psutil (when installed). `--doc_mb 50` adds a
corpus of one document of that size (ingestion only: the bare pass would hold its encodings).

    python benchmarks/bench_ingest.py --mb 133 --workers 0,2
    python benchmarks/bench_ingest.py --mb 1024 --workers 2 --skip_bare
    python benchmarks/bench_ingest.py --mb 5 --doc_mb 5       # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_corpus(path: Path, mb: float, seed: int = 0) -> tuple[int, int]:
    """Writes about `mb` MB of JSONL documents to `path`; returns (documents, bytes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(2, 11)))) for _ in range(30_000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    target = int(mb * 1e6)
    n_docs = size = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        while size < target:
            lens = rng.integers(8, 200, size=4096)
            words = rng.choice(len(vocab), size=int(lens.sum()), p=p)
            lines = []
            at = 0
            for n in lens:
                text = " ".join(vocab[w] for w in words[at : at + n]) + "."
                at += n
                lines.append(json.dumps({"text": text, "id": n_docs}))
                n_docs += 1
            block = "\n".join(lines) + "\n"
            f.write(block)
            size += len(block.encode())
    tmp.replace(path)
    return n_docs, size


def make_big_doc(path: Path, mb: float) -> None:
    """Writes a JSONL file of one document of about `mb` MB."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "zebras",
        "graze",
    ]
    n = int(mb * 1e6)
    parts, size, i = [], 0, 0
    while size < n:
        w = words[i % len(words)]
        parts.append(w)
        size += len(w) + 1
        i += 1
    path.write_text(json.dumps({"text": " ".join(parts)}) + "\n")


class TreeRss:
    """Samples the summed RSS of this process and its children (psutil), keeping the peak."""

    def __init__(self, interval: float = 0.05):
        self.peak = 0
        self._stop = threading.Event()
        try:
            import psutil
        except ImportError:
            self._thread = None
            return
        proc = psutil.Process()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    total = proc.memory_info().rss + sum(
                        c.memory_info().rss for c in proc.children(recursive=True)
                    )
                except psutil.Error:
                    total = 0
                self.peak = max(self.peak, total)
                time.sleep(interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        return self.peak


def phase(args: argparse.Namespace) -> dict:
    """Runs one measured phase in this (fresh) process; returns its figures."""
    from jaxknow.data import ingest
    from jaxknow.data.readers import ReaderConfig
    from jaxknow.data.tokenizer import load_tokenizer

    tree = TreeRss()
    t = time.perf_counter()
    out: dict = {}
    if args.phase == "bare":
        tok = load_tokenizer(args.tokenizer)
        with open(args.corpus, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        t_enc = time.perf_counter()
        n_tokens = 0
        for i in range(0, len(texts), 4096):
            n_tokens += sum(len(ids) for ids in tok.encode_batch(texts[i : i + 4096]))
        out["encode_s"] = time.perf_counter() - t_enc
        out["tokens"] = n_tokens
    else:
        cfg = ingest.IngestConfig(reader=ReaderConfig(), workers=args.workers_one)
        r = ingest.ingest_source([args.corpus], args.out, "corpus", args.tokenizer, cfg)
        out["tokens"] = r.index["num_tokens"]
        out["docs"] = r.index["num_docs"]
    out["wall_s"] = time.perf_counter() - t
    out["tree_peak_mib"] = (lambda v: v / 2**20 if v else None)(tree.stop())
    out["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def pipeline_rate(data_dir: Path, batches: int) -> float:
    """Returns the tokens/s the training pipeline reads from the ingested source."""
    from jaxknow.data import pipeline

    cfg = pipeline.PipelineConfig(seq_len=512, batch_size=96, packing="concat", seed=0)
    it = iter(
        pipeline.build_pipeline(pipeline.source_datasets(str(data_dir), ["corpus"]), None, cfg)
    )
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 96 * 512 / (time.perf_counter() - t)


def run_phase(corpus: Path, tokenizer: Path, name: str, workers: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--workers_one",
        str(workers),
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"phase {name} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=float, default=133.0, help="corpus size in MB")
    ap.add_argument("--workers", default="0,2", help="comma-separated ingestion worker counts")
    ap.add_argument("--doc_mb", type=float, default=0.0, help="also a one-document corpus")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--skip_bare", action="store_true", help="ingestion only")
    ap.add_argument(
        "--pipeline_batches",
        type=int,
        default=30,
        help="also time the training pipeline over the ingested source (0: no)",
    )
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers_one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    from jaxknow.data import ingest
    from jaxknow.data.readers import ReaderConfig
    from jaxknow.data.tokenizer import train_bpe

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus_{args.mb:g}mb.jsonl"
    if not corpus.is_file():
        t = time.perf_counter()
        n, size = make_corpus(corpus, args.mb)
        print(
            f"generated {corpus}: {n:,} documents, {size / 1e6:.1f} MB "
            f"in {time.perf_counter() - t:.1f} s"
        )
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        sample = ingest.sample_texts([corpus], ReaderConfig(), 20_000, seed=0)
        train_bpe(sample, args.vocab).save(tok_dir)
    rows = []
    if not args.skip_bare:
        rows.append(
            (
                "bare encode_batch (all texts in memory)",
                run_phase(corpus, tok_dir, "bare", 0, work / "unused"),
            )
        )
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        out = work / f"out_w{w}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        rows.append((f"ingest_source workers={w}", run_phase(corpus, tok_dir, "ingest", w, out)))
    pipe = None
    if args.pipeline_batches and len(rows) > (0 if args.skip_bare else 1):
        pipe = pipeline_rate(
            work / f"out_w{int(args.workers.split(',')[-1])}", args.pipeline_batches
        )
    if args.doc_mb:
        big = work / f"one_doc_{args.doc_mb:g}mb.jsonl"
        make_big_doc(big, args.doc_mb)
        out = work / "out_big"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        rows.append(
            (
                f"ingest_source, one {args.doc_mb:g} MB document, workers=2",
                run_phase(big, tok_dir, "ingest", 2, out),
            )
        )
    size_mb = corpus.stat().st_size / 1e6
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\ncorpus {size_mb:.1f} MB, vocabulary {args.vocab}, {cores} cores")
    print(
        "| what | wall s | encode-only s | tokens | peak RSS self MiB | largest child MiB "
        "| process tree peak MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    bare = rows[0][1]["wall_s"] if not args.skip_bare else None
    for name, r in rows:
        tree = f"{r['tree_peak_mib']:.0f}" if r.get("tree_peak_mib") else "n/a"
        enc = f"{r['encode_s']:.2f}" if "encode_s" in r else ""
        print(
            f"| {name} | {r['wall_s']:.2f} | {enc} | {r['tokens']:,} | "
            f"{r['self_maxrss_mib']:.0f} | {r['children_maxrss_mib']:.0f} | {tree} |"
        )
    if bare:
        for name, r in rows[1:]:
            if "one" not in name:
                print(f"{name}: {r['wall_s'] / bare:.2f}x the bare pass's wall time")
    if pipe is not None:
        print(
            f"grain pipeline over the ingested source (96 x 512 concat packing, in-process): "
            f"{pipe:,.0f} tokens/s"
        )


if __name__ == "__main__":
    main()
