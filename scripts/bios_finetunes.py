"""QA finetunes from an existing pretrained stage (docs/lab_notebook.md).

python scripts/bios_finetunes.py '{"pretrained": "runs/q/pretrain_X", "data": "runs/q/data",
    "out": "runs/qft", "finetunes": {"NAME": {stage overrides..., "lora": {...}}}}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bios_explore import finetune  # noqa: E402

from jaxknow import config as C  # noqa: E402


def main() -> None:
    args = json.loads(sys.argv[1])
    pdir, data, out = Path(args["pretrained"]), Path(args["data"]), Path(args["out"])
    model = C.model_config(json.loads((pdir / "model_config.json").read_text()))
    exp = {"seed": args.get("seed", 0), "model": model, "mesh": C.MeshConfig()}
    for name, ft in args["finetunes"].items():
        finetune(exp, name, ft, pdir, data, out)


if __name__ == "__main__":
    main()
