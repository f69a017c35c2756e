"""zhrag application layer: settings, the FastAPI service and the ``zhrag`` CLI (the composition root)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
