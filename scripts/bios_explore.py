"""bioS design exploration (docs/lab_notebook.md): one pretraining, its memorisation, QA finetunes.

    python scripts/bios_explore.py '{"workdir": "runs/e2", "world": {...}, "pretrain": {...},
        "finetunes": {"NAME": {stage overrides..., "lora": {...}}}, "mixed_qa_weight": 4.0}'

Materialises a bioS world (the quickstart's pools unless overridden), pretrains the augmentation
`aug` (default multi5+permute+fullname; with `mixed_qa_weight`, mixed with P_train QA and
evaluated directly), prints memorisation ("MEM") and each finetune's P_test / P_train exact
match ("FT").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow import config as C  # noqa: E402
from jaxknow.data import build  # noqa: E402
from jaxknow.experiments import common  # noqa: E402
from jaxknow.model.lora import LoraConfig  # noqa: E402
from jaxknow.studies.bios import study as B  # noqa: E402
from jaxknow.studies.bios.corpus import aug_source_name, bios_corpora, bios_world  # noqa: E402

EVAL = B.BiosEvalSettings(max_new_tokens=20, batch_size=128, max_people=100)


def qa_line(tag: str, r: dict) -> str:
    """Returns one printed line of P_test / P_train exact match (and P_test per attribute)."""
    per = {a: round(r["test"].get(f"em_{a}", 0), 2) for a in B.ATTRIBUTES}
    return (
        f"{tag} test {r['test']['em_attr_mean']:.3f} train {r['train']['em_attr_mean']:.3f} {per}"
    )


def finetune(exp: dict, name: str, ft: dict, pdir: Path, data: Path, out: Path) -> None:
    """Runs one QA finetune from `pdir` and prints its exact match."""
    f = dict(
        steps=150,
        batch_size=32,
        seq_len=64,
        packing="pad",
        lr=1e-3,
        warmup_steps=10,
        weight_decay=0.0,
        log_every=25,
    )
    ft = dict(ft)
    lora = ft.pop("lora", None)
    f.update(ft)
    fdir = out / f"ft_{name}"
    t1 = time.time()
    common.run_stage(
        name,
        common.stage_spec(
            stage=C.parse(common.StageConfig, f, "finetune"),
            sources=[{"name": "qa_train"}],
            data_dir=data,
            init_from=pdir,
            lora=C.parse(LoraConfig, lora, "lora") if lora else None,
            trainable="lora" if lora else "all",
            **exp,
        ),
        fdir,
    )
    r = B.evaluate_qa(fdir, data, EVAL)
    print(qa_line(f"FT {name}", r), f"min {(time.time() - t1) / 60:.2f}", flush=True)


def main() -> None:
    args = json.loads(sys.argv[1])
    wd = Path(args["workdir"])
    wd.mkdir(parents=True, exist_ok=True)
    seed = args.get("seed", 0)
    world = dict(
        kind="bios",
        num_people=200,
        vocab_size=1024,
        num_cities=20,
        num_universities=20,
        num_majors=20,
        num_companies=20,
        birth_year_min=1960,
        birth_year_max=1999,
    )
    world.update(args.get("world", {}))
    aug = args.get("aug", "multi5+permute+fullname")
    world.setdefault("augmentations", [aug])
    model = dict(
        preset="tiny",
        pos_embedding="rope",
        vocab_size=world["vocab_size"],
        d_model=128,
        n_layers=4,
        n_heads=4,
        d_ff=512,
        max_seq_len=512,
        dtype="float32",
    )
    model.update(args.get("model", {}))
    exp = {"seed": seed, "model": C.model_config(model), "mesh": C.MeshConfig()}
    data = wd / "data"
    if not (data / "manifest.json").is_file():
        build.materialize(world, data, seed)
    pre = dict(
        steps=400,
        batch_size=32,
        seq_len=128,
        lr=6e-3,
        warmup_steps=20,
        end_lr_fraction=0.1,
        weight_decay=0.1,
        log_every=50,
    )
    pre.update(args.get("pretrain", {}))
    src = aug_source_name(aug)
    srcs = [{"name": src}]
    mixed = args.get("mixed_qa_weight")
    if mixed:
        srcs = [{"name": src, "weight": 1.0}, {"name": "qa_train", "weight": mixed}]
    t0 = time.time()
    pdir = wd / "pretrain"
    common.run_stage(
        "pretrain",
        common.stage_spec(
            stage=C.parse(common.StageConfig, pre, "pretrain"), sources=srcs, data_dir=data, **exp
        ),
        pdir,
    )
    if mixed:
        print(qa_line("MIXED", B.evaluate_qa(pdir, data, EVAL)), flush=True)
    print("pretrain min", (time.time() - t0) / 60, flush=True)
    w, opts = bios_world(world, seed)
    mem = B.memorisation(
        pdir,
        bios_corpora(w, opts, seed)[src],
        B.BiosEvalSettings(memorisation_bios=1000),
        [v for vals in w.attribute_values.values() for v in vals],
    )
    print("MEM", json.dumps({k: round(v, 3) for k, v in mem.items()}), flush=True)
    for name, ft in args.get("finetunes", {}).items():
        finetune(exp, name, ft, pdir, data, wd)
    print("total min", (time.time() - t0) / 60)


if __name__ == "__main__":
    main()
