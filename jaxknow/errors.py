"""Errors raised in several layers: this module imports nothing, so the lowest layer can raise
them and every layer above can catch them (WORKSPACE.md, "Layers")."""


class CorpusFormatError(ValueError):
    """A corpus or data file is malformed; the message names the file and the line."""
