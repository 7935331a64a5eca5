"""Per-device memory plan of a training step: ``python -m launch.memory_plan --preset=llama-8b
--mesh=1,8,1 --batch=16 --seq_len=2048 [--param_dtype=bfloat16] [--remat=full]
[--lora_rank=64 --trainable=lora] [--measure]``.

Prints parameters, gradients, optimizer state and activations per device (and which
accelerators it fits). `--measure` also compiles the step on this machine's devices (no
allocation) and prints XLA's own memory analysis beside the plan: run it on a GPU, or on a
simulated CPU mesh (XLA_FLAGS=--xla_force_host_platform_device_count=8) with small shapes.
"""

from __future__ import annotations

from absl import flags

from launch.common import run_app, run_main

_PRESET = flags.DEFINE_string("preset", "llama-8b", "Model preset (jaxknow.model.config).")
_OVERRIDES = flags.DEFINE_list("model", [], "Model field overrides, e.g. d_model=256,n_layers=4")
_MESH = flags.DEFINE_string("mesh", "1,8,1", "data,fsdp,tensor axis sizes.")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch (sequences).")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "Sequence length.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_PDTYPE = flags.DEFINE_string("param_dtype", "float32", "Parameter (and Adam moment) dtype.")
_REMAT = flags.DEFINE_enum("remat", "full", ["none", "full", "dots", "dots_no_batch"], "Remat.")
_ACCUM = flags.DEFINE_integer("grad_accum", 1, "Gradient accumulation steps.")
_CHUNK = flags.DEFINE_integer("loss_chunk", 0, "Positions per chunk of the output softmax.")
_LORA = flags.DEFINE_integer("lora_rank", 0, "LoRA rank (0: none).")
_TRAINABLE = flags.DEFINE_enum("trainable", "all", ["all", "lora"], "What trains.")
_MEASURE = flags.DEFINE_bool(
    "measure",
    False,
    "Also compile the step here and print XLA's "
    "memory analysis (the mesh must match this machine's devices).",
)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def main(argv: list[str]) -> None:
    del argv

    def go() -> None:
        from jaxknow.config import ConfigError
        from jaxknow.model.config import preset
        from jaxknow.model.lora import ATTN_TARGETS, MLP_TARGETS, LoraConfig
        from jaxknow.train.memory import GiB, measured_step_memory, plan_memory

        try:
            shape = [int(x) for x in _MESH.value.split(",")]
        except ValueError:
            raise ConfigError(f"--mesh={_MESH.value!r}: expected three integers") from None
        if len(shape) != 3:
            raise ConfigError(f"--mesh={_MESH.value!r}: expected data,fsdp,tensor")
        over = {}
        for kv in _OVERRIDES.value:
            if "=" not in kv:
                raise ConfigError(f"--model: {kv!r} is not FIELD=VALUE")
            k, v = kv.split("=", 1)
            over[k] = _value(v)
        cfg = preset(
            _PRESET.value, dtype=_DTYPE.value, param_dtype=_PDTYPE.value, remat=_REMAT.value, **over
        )
        for name, v in (
            ("batch", _BATCH.value),
            ("seq_len", _SEQ.value),
            ("grad_accum", _ACCUM.value),
        ):
            if v <= 0:
                raise ConfigError(f"--{name}={v}: must be positive")
        if _SEQ.value > cfg.max_seq_len:
            raise ConfigError(
                f"--seq_len={_SEQ.value} exceeds the model's max_seq_len="
                f"{cfg.max_seq_len} (--model=max_seq_len=N to raise it)"
            )
        if _BATCH.value % _ACCUM.value:
            raise ConfigError(f"--grad_accum={_ACCUM.value} does not divide --batch={_BATCH.value}")
        lora = None
        if _LORA.value:
            lora = LoraConfig(
                rank=_LORA.value, alpha=16.0, rslora=True, targets=ATTN_TARGETS + MLP_TARGETS
            )
        mesh_shape = dict(zip(("data", "fsdp", "tensor"), shape))
        plan = plan_memory(
            cfg,
            mesh_shape,
            _BATCH.value,
            _SEQ.value,
            lora=lora,
            trainable=_TRAINABLE.value,
            grad_accum=_ACCUM.value,
            loss_chunk=_CHUNK.value,
        )
        print(
            f"{_PRESET.value} {over or ''} batch {_BATCH.value} x {_SEQ.value}, compute "
            f"{_DTYPE.value}, params {_PDTYPE.value}, remat {_REMAT.value}"
        )
        print(plan.table())
        if _MEASURE.value:
            from jaxknow.parallel.mesh import make_mesh

            m = measured_step_memory(
                cfg,
                make_mesh(*shape),
                _BATCH.value,
                _SEQ.value,
                lora=lora,
                trainable=_TRAINABLE.value,
                grad_accum=_ACCUM.value,
                loss_chunk=_CHUNK.value,
            )
            print(
                "XLA memory analysis per device: "
                f"arguments {m['argument'] / GiB:.3f} GiB (plan: state + batch "
                f"{(plan.state + plan.batch) / GiB:.3f}), temporaries {m['temp'] / GiB:.3f} "
                f"GiB (plan: grads + activations + logits + FSDP buffers "
                f"{plan.temporaries / GiB:.3f}, ratio {m['temp'] / plan.temporaries:.2f})"
            )

    run_main(go)


if __name__ == "__main__":
    run_app(main)
