"""Milvus vector store (scale-out; ``pip install 'zhrag[milvus]'``). Milvus Lite works with a local file URI.

Every published index version owns one *generation* of the index's collection (``<collection>__g<hex>``):
a writer copies the live generation's stored vectors into a new one (nothing is re-embedded), applies its
changes there and records the new name in the version it publishes. Search reads the generation its
version names, so a crashed or failed ingest never shows half-written rows; generations of pruned
versions, and orphans of dead writers, are dropped by the next writer.

The server's token is never written to the index: it comes from ``token=`` or ``ZHRAG_MILVUS_TOKEN``.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient

from retrieval.stores.base import MISSING_ID, StoreError, check_vectors

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
_ID, _VECTOR = "id", "vector"
_INSERT_BATCH = 1000
_COPY_BATCH = 1000
_MAX_FILTER_IDS = 16384


_LITE_LOCK = threading.Lock()
_LITE_USERS: Counter[str] = Counter()


def _is_lite(uri: str) -> bool:
    return "://" not in uri


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
        with _LITE_LOCK:
            _LITE_USERS[os.path.abspath(uri)] += 1
    return client


def _generation_name(base: str) -> str:
    return f"{base}{GENERATION_SEPARATOR}{uuid.uuid4().hex[:10]}"


def referenced_generations(version_dirs: Iterable[Path]) -> set[str]:
    """The generation collections the given index versions point at."""
    names = set()
    for version in version_dirs:
        file = version / MILVUS_FILE
        if file.is_file():
            names.add(json.loads(file.read_text())["collection"])
    return names


class MilvusStore:
    """Inner-product search in one generation of a Milvus collection, keyed by the docstore's row ids.

    Args:
        dim: Vector dimension.
        uri: Milvus server (``http://host:19530``) or a Milvus Lite file (``./milvus.db``).
        collection: The index's collection name; a new store writes a fresh generation of it.
        token: ``user:password`` or an API token (default: ``ZHRAG_MILVUS_TOKEN``).
        generation: Open this existing generation instead of creating one.
    """

    def __init__(
        self,
        dim: int,
        uri: str = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        generation: str | None = None,
    ) -> None:
        self.dim, self.uri, self.base = dim, uri, collection
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
        self._client.create_collection(
            collection_name=name,
            dimension=self.dim,
            metric_type="IP",
            primary_field_name=_ID,
            vector_field_name=_VECTOR,
            id_type="int",
            auto_id=False,
        )

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
        self.collection = target

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
        """Drop this generation (a writer that publishes nothing)."""
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)

    @classmethod
    def discard(cls, path: Path, kept: Iterable[Path]) -> None:
        """Drop the generation a pruned version at ``path`` used, unless a ``kept`` version still uses it."""
        file = path / MILVUS_FILE
        if not file.is_file():
            return
        conf = json.loads(file.read_text())
        if conf["collection"] in referenced_generations(kept):
            return
        client = MilvusClient(uri=conf["uri"], token=os.environ.get(TOKEN_ENV, ""))
        try:
            if client.has_collection(conf["collection"]):
                client.drop_collection(conf["collection"])
        finally:
            client.close()

    # -- the store protocol ----------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors under int64 ids."""
        vectors = check_vectors(vectors, self.dim)
        rows = [{_ID: int(i), _VECTOR: v.tolist()} for i, v in zip(ids, vectors, strict=True)]
        for start in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[start : start + _INSERT_BATCH])

    def delete(self, ids: np.ndarray) -> int:
        """Delete ids; returns how many were requested and present."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        present = self._client.get(self.collection, ids=ids, output_fields=[_ID])
        self._client.delete(self.collection, ids=ids)
        return len(present)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` becomes ``id in [...]`` filters inside Milvus.

        Milvus takes a bounded expression, so a long ``allowed`` list is searched in parts of
        ``_MAX_FILTER_IDS`` ids whose top-``k`` lists are merged by score: still exact, one search per part.
        """
        queries = check_vectors(queries, self.dim)
        if allowed is None:
            return self._search(queries, k, "")
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), MISSING_ID, dtype=np.int64)
        parts = [allowed[i : i + _MAX_FILTER_IDS] for i in range(0, len(allowed), _MAX_FILTER_IDS)]
        found = [self._search(queries, k, f"{_ID} in [{','.join(map(str, part.tolist()))}]") for part in parts]
        if len(found) == 1:
            return found[0]
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _search(self, queries: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        results = self._client.search(
            self.collection, data=queries.tolist(), limit=k, filter=expr, search_params={"metric_type": "IP"}
        )
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), MISSING_ID, dtype=np.int64)
        for row, hits in enumerate(results):
            for col, hit in enumerate(hits[:k]):
                scores[row, col] = hit["distance"]
                ids[row, col] = hit[_ID] if _ID in hit else hit["entity"][_ID]
        return scores, ids

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

    def describe(self) -> dict[str, str]:
        """Manifest entry: where the index's collection lives (never the token)."""
        return {"backend": "milvus", "uri": self.uri, "collection": self.base}

    @classmethod
    def load(cls, path: Path, dim: int, **options: str) -> MilvusStore:
        """Reconnect to the generation recorded by :meth:`save`."""
        file = path / MILVUS_FILE
        if not file.is_file():
            raise StoreError(f"missing {file}")
        conf = json.loads(file.read_text())
        return cls(
            dim,
            uri=options.get("uri") or conf["uri"],
            collection=conf.get("base", options.get("collection", DEFAULT_COLLECTION)),
            token=options.get("token"),
            generation=conf["collection"],
        )
