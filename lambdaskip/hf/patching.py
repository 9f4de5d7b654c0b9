"""An undo log for in-place model surgery: every change made to a module is recorded with its inverse.

The retrofit never edits a class or copies a forward: it sets instance attributes (a ``forward`` that shadows
the class's, a new child module) and registers hooks. :class:`Patches` records each such change so that
:meth:`Patches.undo` puts the model back exactly as it was: same modules, same parameters, same code paths.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


class Patches:
    """The list of changes made to one model, undone in reverse order."""

    def __init__(self):
        self._undo: list[Callable[[], None]] = []

    def set_forward(self, module: nn.Module, forward: Callable) -> None:
        """Shadow ``type(module).forward`` with ``forward`` on this instance only."""
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} already has an instance forward; refusing to stack patches")
        module.forward = forward
        self._undo.append(lambda: module.__dict__.pop("forward"))

    def add_module(self, owner: nn.Module, name: str, child: nn.Module) -> None:
        """Register ``child`` as ``owner.<name>`` (a new name: nothing is replaced)."""
        if hasattr(owner, name):
            raise RuntimeError(f"{type(owner).__name__} already has an attribute {name!r}")
        owner.add_module(name, child)
        self._undo.append(lambda: delattr(owner, name))

    def add_hook(self, handle) -> None:
        """Keep a hook's removable handle."""
        self._undo.append(handle.remove)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
