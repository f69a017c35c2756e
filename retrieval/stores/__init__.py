"""Vector stores behind one small protocol, chosen by name (``faiss`` default, ``numpy``, ``milvus``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from retrieval.protocols import VectorStore
from retrieval.stores.base import MISSING_ID, StoreBase, StoreError

__all__ = [
    "StoreBase",
    "StoreError",
    "MISSING_ID",
    "create_store",
    "store_class",
    "load_store",
    "discard_store",
    "STORE_BACKENDS",
    "StoreBackend",
    "MILVUS_INDEX_TYPES",
]

StoreBackend = Literal["faiss", "numpy", "milvus"]
STORE_BACKENDS: tuple[StoreBackend, ...] = get_args(StoreBackend)
MILVUS_INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "hnsw")
"""``--index-type`` values a Milvus store takes (``auto``: Milvus' AUTOINDEX; ``flat``: exact)."""
_INSTALL_HINTS = {
    "faiss": "pip install faiss-cpu",
    "milvus": 'pip install -e ".[milvus]" (in a zhrag checkout)',
}


def _import_backend(name: str) -> type[StoreBase]:
    try:
        if name == "faiss":
            import faiss  # noqa: F401

            from retrieval.stores.faiss import FaissStore

            return FaissStore
        if name == "numpy":
            from retrieval.stores.numpy import NumpyStore

            return NumpyStore
        if name == "milvus":
            from retrieval.stores.milvus import MilvusStore

            return MilvusStore
    except ImportError as exc:
        raise StoreError(f"vector store {name!r} needs an extra: {_INSTALL_HINTS.get(name, name)}") from exc
    raise StoreError(f"unknown vector store {name!r}; choose one of {STORE_BACKENDS}")


def store_class(name: str) -> type[StoreBase]:
    """The class of backend ``name``: its declared capabilities (e.g. ``external``) without an instance."""
    return _import_backend(name)


def create_store(name: str, dim: int, **options: Any) -> VectorStore:
    """A new, empty store of backend ``name``."""
    return _import_backend(name)(dim, **options)


def load_store(name: str, path: Path, dim: int, **options: Any) -> VectorStore:
    """Load a saved store of backend ``name`` from directory ``path``."""
    return _import_backend(name).load(path, dim, **options)


def discard_store(name: str, path: Path, kept: list[Path], **connection: Any) -> None:
    """Release what a pruned version at ``path`` holds outside its directory (a Milvus generation)."""
    _import_backend(name).discard(path, kept, **connection)
