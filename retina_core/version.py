"""The project's version (one definition; the agent, the operator and OTLP resources report it)."""

__version__ = "0.1.0"
