"""Backends run a Graph: the local executor binds nodes to torch hooks on a module."""

from .local import Plan, execute, execute_graph

__all__ = ["Plan", "execute", "execute_graph"]
