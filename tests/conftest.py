"""Test set-up: 8 simulated CPU devices so sharding is exercised for real, and a persistent
compilation cache shared by the tests and the processes they start."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxknow-test-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """A data directory holding the sources of `configs/smoke.py`, built once per module."""
    from configs.smoke import get_config
    from jaxknow.data import build
    from jaxknow.train import setup

    d = tmp_path_factory.mktemp("data")
    spec = setup.parse_run_config(get_config())
    build.ensure_sources(d, [s["name"] for s in spec.data.sources], spec.data.world, spec.seed)
    return d
