"""absl entry points. On a CPU-only machine JAX shows one device, which leaves cores idle for
the small models jaxknow trains there; unless XLA_FLAGS already says otherwise, the entry
points ask for one CPU device per core (a power of two, at most 8; override with
JAXKNOW_CPU_DEVICES=N). Accelerator devices are unaffected.

On x86-64 the generated CPU code is also held to AVX2 (`--xla_cpu_max_isa=AVX2`, unless
XLA_FLAGS sets it): XLA otherwise compiles for the host's newest vector instructions, so two
machines "of the same kind" with and without AVX-512 round differently and a seeded study gives
other per-attribute figures. Matrix-multiply libraries may still pick kernels by CPU model;
docs/lab_notebook.md reports the spread over seeds that every headline must survive."""

import os
import platform


def _cpu_devices() -> int:
    want = os.environ.get("JAXKNOW_CPU_DEVICES")
    if want:
        return max(1, int(want))
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    n = 1
    while n * 2 <= min(cores, 8):
        n *= 2
    return n


if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_cpu_devices()}"
    ).strip()

if platform.machine().lower() in ("x86_64", "amd64") and "xla_cpu_max_isa" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " --xla_cpu_max_isa=AVX2").strip()

# Persistent XLA compilation cache: the stages of an experiment (and reruns) compile the same
# programs again and again. Set JAX_COMPILATION_CACHE_DIR to move it ("" disables).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxknow", "xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
