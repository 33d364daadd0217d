"""gemma4stack: run Google's Gemma 4 models on the hardware you own.

    >>> import gemma4stack as g4
    >>> hw = g4.detect()                       # CPU, caches, RAM, GPUs, bandwidth (hwloc, C core)
    >>> rec = g4.recommend(hw, context=8192)   # which Gemma 4 tiers fit, predicted decode tokens/s
    >>> m = g4.Model("model.gguf")             # GGUF inference in the C core
    >>> m.generate("Once upon a time", max_tokens=32)

Names are imported lazily so `import gemma4stack` stays cheap in notebooks.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "detect": "hardware", "HardwareReport": "hardware",
    "recommend": "recommend", "Recommendation": "recommend",
    "Model": "model",
    "GGUFError": "_core", "UnsupportedError": "_core", "LimitError": "_core",
    "pull": "pull",
    "cost": "cost",
    "bench": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'gemma4stack' has no attribute {name!r}")
    module = importlib.import_module(f"gemma4stack.{mod}")
    value = getattr(module, name)
    if name == mod and callable(module):
        # a callable module (recommend.py) stays the package attribute, so that both
        # g4.recommend(...) and g4.recommend.machines() work
        value = module
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
