"""Milvus vector store (scale-out; ``pip install -e ".[milvus]"``). Milvus Lite works with a local file URI.

Each store is one *generation* of the index's collection (``<collection>__g<hex>``): a segment's vectors
(``retrieval.segments``), written once and never changed; its deletions are excluded inside each search
(``id not in [...]``). The segment directory records the generation's name (``milvus.json``); a writer
drops the generations of segments no kept version lists, and orphans of dead writers. Indexes written
before segments kept one generation per version (and could keep BM25 in Milvus too): they are read as
they are and become segments on their first write.

The server's token is never written to the index: it comes from ``token=`` or ``ZHRAG_MILVUS_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from retrieval.process import MILVUS_LITE_USERS
from retrieval.stores import MILVUS_INDEX_TYPES
from retrieval.stores.base import StoreBase, StoreError, check_vectors
from retrieval.stores.milvus_search import ID_FIELD as _ID
from retrieval.stores.milvus_search import MAX_FILTER_IDS, search_in_parts

log = logging.getLogger(__name__)

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
        MILVUS_LITE_USERS.join(os.path.abspath(uri))
    return client


def _release(client: MilvusClient, uri: str) -> None:
    """Close a client from :func:`_connect`; the last one of a Milvus Lite file in this process stops its
    server, so another process can open the file."""
    client.close()
    if _is_lite(uri):
        path = os.path.abspath(uri)
        if MILVUS_LITE_USERS.leave(path):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(path)


def _generation_name(base: str) -> str:
    return f"{base}{GENERATION_SEPARATOR}{uuid.uuid4().hex[:10]}"


def referenced_generations(dirs: Iterable[Path]) -> set[str]:
    """The generation collections the given segment (or older version) directories point at."""
    names = set()
    for folder in dirs:
        file = folder / MILVUS_FILE
        if file.is_file():
            conf = json.loads(file.read_text())
            names.add(conf["collection"])
            if conf.get("bm25_collection"):  # a version written before segments
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
    """

    external = True
    max_excluded = MAX_FILTER_IDS

    def __init__(
        self,
        dim: int,
        uri: str = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        generation: str | None = None,
        kind: str = "auto",
        **older: Any,
    ) -> None:
        if kind not in MILVUS_INDEX_TYPES:
            raise StoreError(f"unknown Milvus index type {kind!r}; choose one of {tuple(MILVUS_INDEX_TYPES)}")
        self.dim, self.uri, self.base, self.kind = dim, uri, collection, kind  # ``older``: e.g. ``bm25``
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

    def close(self) -> None:
        """Release the connection; the last store of a Milvus Lite file in this process stops its server,
        so another process can open the file."""
        _release(self._client, self.uri)

    def drop(self) -> None:
        """Drop this generation (a segment that was never published)."""
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)

    @classmethod
    def sweep(cls, conf: dict[str, Any], listed: Iterable[Path], **connection: Any) -> None:
        """Drop the generations of collection ``conf["collection"]`` that no ``listed`` directory uses (dead
        writers' segments, whatever point they died at)."""
        uri, base = conf.get("uri", DEFAULT_URI), conf.get("collection", DEFAULT_COLLECTION)
        referenced = referenced_generations(listed)
        client = _connect(uri, connection.get("token"))
        try:
            for name in client.list_collections():
                if name.startswith(base + GENERATION_SEPARATOR) and name not in referenced:
                    log.warning("dropping Milvus collection %s: no kept version uses it (a writer died)", name)
                    client.drop_collection(name)
        finally:
            _release(client, uri)

    @classmethod
    def discard(cls, path: Path, kept: Iterable[Path], **connection: Any) -> None:
        """Drop the generation a removed segment (or older version) at ``path`` used, unless a ``kept``
        directory still uses it."""
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
        if emptied and _is_lite(conf["uri"]) and lite.resolve().parent in path.resolve().parents:
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
        (path / MILVUS_FILE).write_text(json.dumps(conf, ensure_ascii=False))

    def describe(self) -> dict[str, Any]:
        """Manifest entry: where the index's collection lives and whether BM25 is kept there (never the token)."""
        return {
            "backend": "milvus",
            "uri": self.uri,
            "collection": self.base,
            "kind": self.kind,
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
        )
        return store
