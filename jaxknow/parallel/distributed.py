"""Multi-host start-up: `jax.distributed.initialize()` when the job spans several processes."""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables that mean "this process is one of several".
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def multi_process_requested() -> bool:
    """Returns True when the environment says the job has several processes (a coordinator
    address is set, several SLURM tasks, or a Cloud TPU slice with several workers)."""
    if any(os.environ.get(v) for v in _MULTI_PROCESS_ENV):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def maybe_initialize(mode: str = "auto") -> bool:
    """Initialises jax.distributed for mode "on", or for "auto" when the environment asks;
    returns True if it did. Must run before any other JAX call touches the devices."""
    if mode == "off" or (mode == "auto" and not multi_process_requested()):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    # Explicit settings (e.g. several processes on one machine); clusters that JAX detects
    # itself (Cloud TPU, SLURM) need none.
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        # Cross-process collectives on CPU go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed initialised: process %d of %d, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )
    return True
