"""Errors raised while preparing reference models."""


class ReferenceModelUnavailable(RuntimeError):
    """A reference model cannot be materialised; the message names the cause and the fixes."""
