#!/usr/bin/env bash
# Installs jaxknow with its test extras into .venv and runs the default test suite
# (8 simulated CPU devices). torch==2.13.0 is the CPU wheel used by the Hugging Face parity
# tests; where it cannot be installed, those tests skip themselves. The [eval] extra
# (lm-evaluation-harness) serves the lm-eval adapter tests, which skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,gguf]'
.venv/bin/pip install -q 'torch==2.13.0' 'transformers==5.23.0' || echo "torch/transformers unavailable: HF parity tests will skip"
.venv/bin/pip install -q -e '.[eval]' || echo "lm-eval unavailable: the lm-eval parity tests will skip"
export XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -n 2 -m "not slow" -q "$@"
