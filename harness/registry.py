"""Kept for code outside this project that registers plug-ins: the registry lives in :mod:`harness.core.registry`."""

from harness.core.registry import Registry, UnknownNameError

__all__ = ["Registry", "UnknownNameError"]
