"""Evaluation configs for ``python -m launch.evaluate --config=configs/eval/NAME.py``."""
