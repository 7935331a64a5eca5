"""absl entry points. On a CPU-only machine JAX shows one device, which leaves cores idle for
the small models jaxknow trains there; unless XLA_FLAGS already says otherwise, the entry
points ask for one CPU device per core (a power of two, at most 8; override with
JAXKNOW_CPU_DEVICES=N). Accelerator devices are unaffected."""

import os


def _cpu_devices() -> int:
    want = os.environ.get("JAXKNOW_CPU_DEVICES")
    if want:
        return max(1, int(want))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    n = 1
    while n * 2 <= min(cores, 8):
        n *= 2
    return n


if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_cpu_devices()}").strip()

# Persistent XLA compilation cache: the stages of an experiment (and reruns) compile the same
# programs again and again. Set JAX_COMPILATION_CACHE_DIR to move it ("" disables).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxknow", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
