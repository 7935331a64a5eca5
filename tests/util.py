"""Helpers shared by the tests: run an entry point in a fresh process, random parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(
    module: str,
    *args: str,
    devices: int = 8,
    timeout: float = 600,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Runs `python -m module args...` in a new process on `devices` simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_module(module: str, *args: str, devices: int = 8) -> subprocess.Popen:
    """Starts `python -m module args...` in a new process and returns it."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def numpy_params(cfg, seed: int = 0):
    """Returns random parameters drawn with numpy (no per-shape XLA compiles, unlike eager
    jax.random), with the shapes and initialisers of `param_specs(cfg)`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxknow.model.params import ParamSpec, param_specs

    rng = np.random.default_rng(seed)

    def one(spec: ParamSpec):
        if spec.init in ("zeros", "ones"):
            return jnp.asarray(np.full(spec.shape, float(spec.init == "ones"), np.float32))
        return jnp.asarray(rng.normal(0.0, spec.std, spec.shape).astype(np.float32))

    return jax.tree.map(one, param_specs(cfg), is_leaf=lambda x: isinstance(x, ParamSpec))
