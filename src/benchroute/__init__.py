"""benchroute: pick the right LLM for a job by learning from benchmark results.

``from benchroute import Router, load_benchmark`` is cheap: the heavy modules (numpy, pandas,
scikit-learn, torch) load when a name is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Router", "__version__", "load_benchmark"]

if TYPE_CHECKING:
    from benchroute.data import load_benchmark
    from benchroute.router import Router

_LAZY = {"Router": "benchroute.router", "load_benchmark": "benchroute.data"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchroute' has no attribute {name!r}")
