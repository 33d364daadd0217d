"""Modules named after the function they export: cost.py and cost(), pull.py and pull(), ...

`import gemma4stack.cost` makes the package attribute `gemma4stack.cost` the module (the import
system sets it), whatever the package's lazy __getattr__ returned before. So that
`g4.cost(...)` works in any import order, such a module makes itself callable: calling it
calls its function of the same name.
"""
from __future__ import annotations

import sys
from typing import Any


def make_callable(module_name: str) -> None:
    """Let sys.modules[module_name] be called as its function named like the module's last
    component (e.g. "gemma4stack.cost" -> cost()). Call at the end of the module."""
    mod = sys.modules[module_name]
    func = module_name.rsplit(".", 1)[-1]

    class CallableModule(type(mod)):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, func)(*args, **kwargs)

    mod.__class__ = CallableModule
