"""Implementer backends behind one small interface: offline recipes, the Anthropic API, any CLI."""

from agents.backends.base import Backend, BackendError, Implementation

__all__ = ["Backend", "BackendError", "Implementation"]
