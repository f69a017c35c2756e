"""Milvus vector store (scale-out; ``pip install -e ".[milvus]"``). Milvus Lite works with a local file URI.

Every published index version owns one *generation* of the index's collection (``<collection>__g<hex>``):
a writer copies the live generation's stored vectors into a new one (nothing is re-embedded), applies its
changes there and records the new name in the version it publishes. Search reads the generation its
version names, so a crashed or failed ingest never shows half-written rows; generations of pruned
versions, and orphans of dead writers, are dropped by the next writer.

With ``bm25=True`` (the default) the BM25 leg lives in Milvus too: each version also owns
``<generation>__bm25``, written in full when it is published (see :mod:`retrieval.stores.milvus_bm25`).

The server's token is never written to the index: it comes from ``token=`` or ``ZHRAG_MILVUS_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymilvus import MilvusClient

from retrieval.stores import MILVUS_INDEX_TYPES
from retrieval.stores.base import StoreBase, StoreError, check_vectors
from retrieval.stores.milvus_bm25 import BM25_SUFFIX, MilvusBM25, write_bm25_collection
from retrieval.stores.milvus_search import ID_FIELD as _ID
from retrieval.stores.milvus_search import search_in_parts

if TYPE_CHECKING:
    from retrieval.bm25 import BM25Index

__all__ = [
    "MilvusStore",
    "MILVUS_FILE",
    "DEFAULT_URI",
    "DEFAULT_COLLECTION",
    "GENERATION_SEPARATOR",
    "TOKEN_ENV",
    "referenced_generations",
]

MILVUS_FILE = "milvus.json"
DEFAULT_URI = "http://localhost:19530"
DEFAULT_COLLECTION = "zhrag"
GENERATION_SEPARATOR = "__g"
TOKEN_ENV = "ZHRAG_MILVUS_TOKEN"
_VECTOR = "vector"
_INSERT_BATCH = 1000
_COPY_BATCH = 1000
# zhrag's ``--index-type`` names (MILVUS_INDEX_TYPES): ``auto`` lets Milvus choose (HNSW in Milvus Lite, so
# approximate), ``flat`` searches exactly (FAISS flat's results), ``hnsw`` builds HNSW with fixed parameters.
_MILVUS_INDEX = {"auto": "AUTOINDEX", "flat": "FLAT", "hnsw": "HNSW"}
_BUILD: dict[str, dict[str, int]] = {"auto": {}, "flat": {}, "hnsw": {"M": 32, "efConstruction": 200}}
_HNSW_MIN_EF = 128


_LITE_LOCK = threading.Lock()
_LITE_USERS: Counter[str] = Counter()


def _is_lite(uri: str) -> bool:
    return "://" not in uri


class _LiteTimestampNoise(logging.Filter):
    """Milvus Lite does not implement AllocTimestamp, so every query iterator logs a server traceback and a
    client warning before pymilvus falls back to a client-side timestamp (results are unaffected)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message == "Exception calling application: Method not implemented!"
            or message.startswith("failed to get mvccTs from milvus server")
        )


def _quiet_lite_noise() -> None:
    for name in ("grpc._server", "pymilvus.client.iterator.query_iterator"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LiteTimestampNoise) for f in logger.filters):
            logger.addFilter(_LiteTimestampNoise())


def _connect(uri: str, token: str | None) -> MilvusClient:
    """A client; a Milvus Lite file another process holds gets a message saying what to do."""
    try:
        client = MilvusClient(uri=uri, token=token if token is not None else os.environ.get(TOKEN_ENV, ""))
    except Exception as exc:  # noqa: BLE001 - pymilvus raises its own exception types
        if _is_lite(uri):
            raise StoreError(
                f"cannot open the Milvus Lite file {uri}: {exc}. Milvus Lite serves one process per file; if "
                "`zhrag serve` has it open, add documents through its POST /documents or stop it first, or "
                "use a Milvus server (--milvus-uri http://HOST:19530) for several processes"
            ) from exc
        raise StoreError(f"cannot reach Milvus at {uri}: {exc}") from exc
    if _is_lite(uri):
        _quiet_lite_noise()
        with _LITE_LOCK:
            _LITE_USERS[os.path.abspath(uri)] += 1
    return client


def _generation_name(base: str) -> str:
    return f"{base}{GENERATION_SEPARATOR}{uuid.uuid4().hex[:10]}"


def referenced_generations(version_dirs: Iterable[Path]) -> set[str]:
    """The generation collections (vectors and BM25) the given index versions point at."""
    names = set()
    for version in version_dirs:
        file = version / MILVUS_FILE
        if file.is_file():
            conf = json.loads(file.read_text())
            names.add(conf["collection"])
            if conf.get("bm25_collection"):
                names.add(conf["bm25_collection"])
    return names


class MilvusStore(StoreBase):
    """Inner-product search in one generation of a Milvus collection, keyed by the docstore's row ids.

    Args:
        dim: Vector dimension.
        uri: Milvus server (``http://host:19530``) or a Milvus Lite file (``./milvus.db``).
        collection: The index's collection name; a new store writes a fresh generation of it.
        token: ``user:password`` or an API token (default: ``ZHRAG_MILVUS_TOKEN``).
        generation: Open this existing generation instead of creating one.
        kind: Vector index of new generations: ``auto`` (Milvus' AUTOINDEX), ``flat`` (exact) or ``hnsw``.
        bm25: Keep the BM25 leg in Milvus as well (written at :meth:`put_bm25`); ``False`` keeps it local.
        bm25_collection: The BM25 collection of an existing generation.
    """

    external = True

    def __init__(
        self,
        dim: int,
        uri: str = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        generation: str | None = None,
        kind: str = "auto",
        bm25: bool = True,
        bm25_collection: str | None = None,
    ) -> None:
        if kind not in MILVUS_INDEX_TYPES:
            raise StoreError(f"unknown Milvus index type {kind!r}; choose one of {tuple(MILVUS_INDEX_TYPES)}")
        self.dim, self.uri, self.base, self.kind, self.keeps_bm25 = dim, uri, collection, kind, bm25
        self.bm25_collection = bm25_collection
        self.bm25_stats: dict[str, int] = {}
        self._rows: int | None = None  # rows of this generation, cached while nothing is written
        self._client = _connect(uri, token)
        if generation is not None:
            if not self._client.has_collection(generation):
                raise StoreError(f"Milvus collection {generation!r} at {uri} is gone (was it dropped by hand?)")
            self.collection = generation
            self._client.load_collection(generation)  # a collection reopened by a new process starts released
        else:
            self.collection = _generation_name(collection)
            self._create(self.collection)

    def _create(self, name: str) -> None:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False)
        schema.add_field(_ID, DataType.INT64, is_primary=True)
        schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        params = self._client.prepare_index_params()
        params.add_index(
            field_name=_VECTOR, index_type=_MILVUS_INDEX[self.kind], metric_type="IP", params=_BUILD[self.kind]
        )
        self._client.create_collection(name, schema=schema, index_params=params)

    # -- generations -----------------------------------------------------------------------------
    def begin_write(self, versions: Iterable[Path]) -> None:
        """Continue in a new generation holding a copy of this one (for a writer; readers keep this one).

        Generations of this collection that none of the index's ``versions`` references (dead writers)
        are dropped.
        """
        referenced = referenced_generations(versions)
        for name in self._client.list_collections():
            if name.startswith(self.base + GENERATION_SEPARATOR) and name not in referenced | {self.collection}:
                self._client.drop_collection(name)
        source, target = self.collection, _generation_name(self.base)
        self._create(target)
        iterator = self._client.query_iterator(source, batch_size=_COPY_BATCH, output_fields=[_ID, _VECTOR])
        try:
            while rows := iterator.next():
                self._client.insert(target, [{_ID: r[_ID], _VECTOR: r[_VECTOR]} for r in rows])
        finally:
            iterator.close()
        self.collection, self.bm25_collection = target, None  # the new BM25 collection is written at publish
        self._rows = None

    def put_bm25(self, index: BM25Index) -> None:
        """Write this generation's BM25 collection from the index's final BM25 weights."""
        name = self.collection + BM25_SUFFIX
        if self._client.has_collection(name):
            self._client.drop_collection(name)
        self.bm25_stats = write_bm25_collection(self._client, name, index)
        self.bm25_collection = name

    def bm25_index(self) -> MilvusBM25 | None:
        """The BM25 leg this generation keeps in Milvus (``None``: it has none)."""
        if not self.bm25_collection:
            return None
        if not self._client.has_collection(self.bm25_collection):
            raise StoreError(f"Milvus collection {self.bm25_collection!r} at {self.uri} is gone")
        return MilvusBM25(self._client, self.bm25_collection)

    def close(self) -> None:
        """Release the connection; the last store of a Milvus Lite file in this process stops its server,
        so another process can open the file."""
        self._client.close()
        if _is_lite(self.uri):
            path = os.path.abspath(self.uri)
            with _LITE_LOCK:
                _LITE_USERS[path] -= 1
                last = _LITE_USERS[path] <= 0
            if last:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)

    def drop(self) -> None:
        """Drop this generation and its BM25 collection (a writer that publishes nothing)."""
        for name in (self.collection, self.bm25_collection):
            if name and self._client.has_collection(name):
                self._client.drop_collection(name)

    @classmethod
    def discard(cls, path: Path, kept: Iterable[Path], **connection: Any) -> None:
        """Drop the generation a pruned version at ``path`` used, unless a ``kept`` version still uses it."""
        file = path / MILVUS_FILE
        if not file.is_file():
            return
        conf = json.loads(file.read_text())
        names = referenced_generations([path]) - referenced_generations(kept)
        if not names:
            return
        client = MilvusClient(uri=conf["uri"], token=connection.get("token") or os.environ.get(TOKEN_ENV, ""))
        try:
            for name in sorted(names):
                if client.has_collection(name):
                    client.drop_collection(name)
            emptied = not client.list_collections()
        finally:
            client.close()
        lite = Path(conf["uri"])
        # a Milvus Lite file the index made for itself (INDEX/milvus.db) goes with its last collection
        if emptied and _is_lite(conf["uri"]) and lite.resolve().parent == path.resolve().parent:
            if lite.is_dir():  # newer Milvus Lite keeps a directory under the file's name
                shutil.rmtree(lite, ignore_errors=True)
            else:
                lite.unlink(missing_ok=True)
            (lite.parent / f".{lite.name}.lock").unlink(missing_ok=True)

    # -- the store protocol ----------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under int64 ids."""
        vectors = check_vectors(vectors, self.dim)
        self._rows = None
        rows = [{_ID: int(i), _VECTOR: v.tolist()} for i, v in zip(ids, vectors, strict=True)]
        for start in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[start : start + _INSERT_BATCH])

    def delete(self, ids: np.ndarray) -> int:
        """Delete ids; returns how many were requested and present."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        self._rows = None
        present = self._client.get(self.collection, ids=ids, output_fields=[_ID])
        self._client.delete(self.collection, ids=ids)
        return len(present)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` becomes ``id in [...]`` filters inside Milvus."""
        queries = check_vectors(queries, self.dim)
        return search_in_parts(self._search, len(queries), k, allowed, queries, rows=self._total, excluded=excluded)

    def _total(self) -> int:
        if self._rows is None:
            self._rows = self.count()
        return self._rows

    def _search(self, k: int, expr: str, queries: np.ndarray) -> list[list[dict[str, Any]]]:
        return self._client.search(
            self.collection,
            data=queries.tolist(),
            anns_field=_VECTOR,
            limit=k,
            filter=expr,
            search_params={"metric_type": "IP", "params": {"ef": max(k, _HNSW_MIN_EF)} if self.kind == "hnsw" else {}},
        )

    def count(self) -> int:
        """Rows in this generation."""
        self._client.flush(self.collection)
        return int(self._client.get_collection_stats(self.collection)["row_count"])

    def items(self, batch: int = _COPY_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored (ids, vectors), in batches."""
        iterator = self._client.query_iterator(self.collection, batch_size=batch, output_fields=[_ID, _VECTOR])
        try:
            while rows := iterator.next():
                ids = np.fromiter((r[_ID] for r in rows), dtype=np.int64, count=len(rows))
                yield ids, np.asarray([r[_VECTOR] for r in rows], dtype=np.float32)
        finally:
            iterator.close()

    def save(self, path: Path) -> None:
        """Record which generation this version reads (Milvus persists the rows itself)."""
        self._client.flush(self.collection)
        path.mkdir(parents=True, exist_ok=True)
        conf = {"uri": self.uri, "collection": self.collection, "base": self.base}
        if self.bm25_collection:
            conf["bm25_collection"] = self.bm25_collection
        if self.bm25_stats:
            conf["bm25_stats"] = self.bm25_stats
        (path / MILVUS_FILE).write_text(json.dumps(conf, ensure_ascii=False))

    def describe(self) -> dict[str, Any]:
        """Manifest entry: where the index's collection lives and whether BM25 is kept there (never the token)."""
        return {
            "backend": "milvus",
            "uri": self.uri,
            "collection": self.base,
            "kind": self.kind,
            "bm25": self.keeps_bm25,
        }

    @classmethod
    def load(cls, path: Path, dim: int, **options: Any) -> MilvusStore:
        """Reconnect to the generation recorded by :meth:`save`."""
        file = path / MILVUS_FILE
        if not file.is_file():
            raise StoreError(f"missing {file}")
        conf = json.loads(file.read_text())
        store = cls(
            dim,
            uri=options.get("uri") or conf["uri"],
            collection=conf.get("base", options.get("collection", DEFAULT_COLLECTION)),
            token=options.get("token"),
            generation=conf["collection"],
            kind=options.get("kind", "auto"),
            bm25=bool(options.get("bm25", True)),
            bm25_collection=conf.get("bm25_collection"),
        )
        store.bm25_stats = conf.get("bm25_stats", {})
        return store
