"""Convert between Hugging Face and jaxknow models.

``python -m launch.convert --from=hf --src=HF_DIR --dst=JAXKNOW_DIR [--param_dtype=bfloat16]
[--mesh_fsdp=N ...]`` imports a GPT-2, Llama, Qwen2 or Gemma checkpoint (config.json,
safetensors, tokenizer.json), streaming each tensor into its sharding on the mesh;
``python -m launch.convert --from=jaxknow --src=DIR --dst=HF_DIR [--step=N]`` exports a
converted model or a training workdir (LoRA adapters merged) to the Hugging Face layout;
``python -m launch.convert --from=gguf --src=FILE.gguf --dst=JAXKNOW_DIR`` imports a llama.cpp
GGUF file (Llama or Gemma 3, quantized or not: dequantized to float32, tokenizer rebuilt from
the file's metadata; needs ``pip install 'jaxknow[gguf]'``). A non-empty destination is only
replaced with --overwrite.
"""

from __future__ import annotations

from absl import app, flags

from jaxknow.io.hf_config import FAMILIES
from launch.common import run_app, run_main

_FROM = flags.DEFINE_enum("from", None, ["hf", "jaxknow", "gguf"], "Source format.")
_SRC = flags.DEFINE_string("src", None, "Source directory (a .gguf file with --from=gguf).")
_DST = flags.DEFINE_string("dst", None, "Destination directory (created).")
_PARAM_DTYPE = flags.DEFINE_enum(
    "param_dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Stored dtype of the result (default: float32 on import, the model's on export).",
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Import only: compute dtype recorded in the model config (default: --param_dtype).",
)
_STEP = flags.DEFINE_integer("step", None, "Export only: checkpoint step (default: latest).")
_FAMILY = flags.DEFINE_enum(
    "family",
    None,
    list(FAMILIES),
    "Export only: Hugging Face family (default: recorded or detected).",
)
_MAX_SHARD = flags.DEFINE_string(
    "max_shard_size", "5GB", "Export only: largest safetensors file (e.g. 5GB, 500MB)."
)
_MESH_DATA = flags.DEFINE_integer("mesh_data", -1, "Mesh data axis (-1: fill).")
_MESH_FSDP = flags.DEFINE_integer("mesh_fsdp", 1, "Mesh fsdp axis.")
_MESH_TENSOR = flags.DEFINE_integer("mesh_tensor", 1, "Mesh tensor axis.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty destination.")
flags.mark_flags_as_required(["from", "src", "dst"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go() -> None:
        from jaxknow.io import hf
        from jaxknow.parallel.mesh import make_mesh

        mesh = make_mesh(_MESH_DATA.value, _MESH_FSDP.value, _MESH_TENSOR.value)
        if _FROM.value == "gguf":
            from jaxknow.io.gguf import gguf_to_jaxknow

            # Without mesh flags, the parameters are spread over the devices (fsdp): one copy
            # of the model in host memory.
            chosen = any(flags.FLAGS[f].present for f in ("mesh_data", "mesh_fsdp", "mesh_tensor"))
            out = gguf_to_jaxknow(
                _SRC.value,
                _DST.value,
                param_dtype=_PARAM_DTYPE.value or "float32",
                dtype=_DTYPE.value,
                mesh=mesh if chosen else None,
                overwrite=_OVERWRITE.value,
            )
        elif _FROM.value == "hf":
            out = hf.hf_to_jaxknow(
                _SRC.value,
                _DST.value,
                param_dtype=_PARAM_DTYPE.value or "float32",
                dtype=_DTYPE.value,
                mesh=mesh,
                overwrite=_OVERWRITE.value,
            )
        else:
            out = hf.jaxknow_to_hf(
                _SRC.value,
                _DST.value,
                step=_STEP.value,
                family=_FAMILY.value,
                dtype=_PARAM_DTYPE.value,
                max_shard_size=_MAX_SHARD.value,
                mesh=mesh,
                overwrite=_OVERWRITE.value,
            )
        print(f"converted {_SRC.value} -> {out}")

    run_main(go)


if __name__ == "__main__":
    run_app(main)
