"""Backends run a Graph: the local executor binds nodes to torch hooks on a module."""

from .local import execute

__all__ = ["execute"]
