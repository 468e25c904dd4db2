"""DERIM: Distributed Energy Resource Integration Middleware."""

__version__ = "0.1.0"
