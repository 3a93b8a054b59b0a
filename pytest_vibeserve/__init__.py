"""vibeserve's pytest plugin: engine contract, checkers, performance gates and reports."""

__version__ = "0.1.0"
