"""zhrag ingestion: loaders, Chinese normalisation, chunkers and the pipeline that writes an index.

Imports ``retrieval``; never ``app``.
"""

from __future__ import annotations

__all__: list[str] = []
