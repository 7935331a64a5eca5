"""jaxknow: controlled experiments on how language models learn, store and extract facts."""

__version__ = "0.1.0"
