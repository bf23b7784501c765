"""Errors raised by ``models``: plain ``ValueError`` subclasses that the node maps to its own."""


class ModelPackageError(ValueError):
    """A model package is missing a file, is malformed, or does not match its own config."""


class PreprocessingError(ValueError):
    """An image cannot be turned into model input; the message says why."""
