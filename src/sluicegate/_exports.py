"""Make public names report their public module (as trio and anyio do), so reprs, docs
and pickles never mention the private modules they are defined in."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["publish"]


def publish(namespace: dict[str, Any], names: list[str], module: str) -> None:
    """Set ``__module__`` to `module` on the classes and functions of `names` defined in
    one of `module`'s private submodules (``module._x``)."""
    private = module + "._"
    for name in names:
        obj = namespace[name]
        # Only classes and functions: a constant's __module__ is its class's, not its own.
        if (isinstance(obj, type) or inspect.isfunction(obj)) and obj.__module__.startswith(
            private
        ):
            obj.__module__ = module
