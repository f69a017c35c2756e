"""Knowledge bases: every index under a root served by one process, one loaded model for all bases that use it.

A knowledge base is an index directory; ``zhrag serve --root DIR`` serves each subdirectory of ``DIR`` that
holds an index, named by its directory (``--index DIR`` serves that one index as the only base). Bases built
with the same model share one loaded model and its micro-batcher (one owner of the device); each keeps its
own manifest, domain (query instruction and synonyms), versions and live reload.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.access import valid_base_name
from app.services import (
    Services,
    build_analyzer,
    build_embedder,
    build_services,
    embedder_for_index,
    model_worker,
    query_cache,
)
from app.settings import Settings
from ingest.pipeline import create_index
from retrieval.embedders.microbatch import MicroBatcher, SharedModel
from retrieval.errors import InputError, UserError
from retrieval.index import CURRENT_FILE, read_manifest, reserve_writer
from retrieval.prompts import resolve_instruction
from retrieval.protocols import Embedder

__all__ = ["KnowledgeBases", "UnknownBase", "BaseNotReady", "BaseExists", "index_dirs"]

log = logging.getLogger(__name__)


class UnknownBase(LookupError):
    """No knowledge base of that name."""


class BaseNotReady(RuntimeError):
    """The base exists but could not be loaded (the reason is the message)."""


class BaseExists(UserError, ValueError):
    """A base of that name already exists."""


def index_dirs(root: Path) -> dict[str, Path]:
    """The knowledge bases under ``root``: each subdirectory holding an index (a ``CURRENT`` file), by name."""
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.is_dir() and (p / CURRENT_FILE).is_file() and valid_base_name(p.name)
    }


def _default_base(settings: Settings, paths: dict[str, Path]) -> str | None:
    """``ZHRAG_DEFAULT_KB``, else the only base, else none."""
    return settings.default_kb or (next(iter(paths)) if len(paths) == 1 else None)


@dataclass
class _Base:
    path: Path
    services: Services | None = None
    error: str | None = None


class KnowledgeBases:
    """The served knowledge bases and the models they share.

    Args:
        settings: Server settings (each base gets a copy with its own ``index``).
        paths: Base name -> index directory.
        root: Where new bases are created (``None``: bases cannot be created, e.g. ``--index``).
        default: The base the top-level routes use (``None``: only ``/kbs/{kb}/…`` routes).
        on_embed_batch: Told the size of each forward pass (metrics).
    """

    def __init__(
        self,
        settings: Settings,
        paths: dict[str, Path],
        root: Path | None = None,
        default: str | None = None,
        on_embed_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.root = root
        self.default = default
        self.on_embed_batch = on_embed_batch
        self._bases = {name: _Base(path) for name, path in paths.items()}
        self._models: dict[str, Embedder] = {}
        self._lock = threading.RLock()  # the maps only, held for microseconds: every request takes it
        self._loading = threading.RLock()  # loads and swaps, one at a time (they take seconds)

    @classmethod
    def from_settings(cls, settings: Settings, on_embed_batch: Callable[[int], None] | None = None) -> KnowledgeBases:
        """``ZHRAG_ROOT`` (every index under it) or ``ZHRAG_INDEX`` (that one); the default base is
        ``ZHRAG_DEFAULT_KB``, else the only base."""
        if settings.root is not None:
            paths, root = index_dirs(settings.root), settings.root
        else:
            paths, root = {settings.index.name: settings.index}, None
        return cls(settings, paths, root, _default_base(settings, paths), on_embed_batch)

    @classmethod
    def serving(cls, settings: Settings, services: dict[str, Services]) -> KnowledgeBases:
        """Bases already loaded elsewhere (tests, an embedding program), served as they are."""
        paths = {name: s.index.root for name, s in services.items()}
        bases = cls(settings, paths, None, _default_base(settings, paths))
        for name, loaded in services.items():
            bases._bases[name].services = loaded
        return bases

    # -- what is served ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every base's name, sorted."""
        with self._lock:
            return sorted(self._bases)

    def path(self, name: str) -> Path:
        """The index directory of ``name``.

        Raises:
            UnknownBase: no such base.
        """
        with self._lock:
            base = self._bases.get(name)
        if base is None:
            raise UnknownBase(name)
        return base.path

    def settings_for(self, name: str) -> Settings:
        """The settings that serve ``name``: the server's, with the base's index directory."""
        return self.settings.model_copy(update={"index": self.path(name), "root": None})

    def services(self, name: str) -> Services:
        """The loaded services of ``name``.

        Raises:
            UnknownBase: no such base. BaseNotReady: it could not be loaded (why).
        """
        with self._lock:
            base = self._bases.get(name)
        if base is None:
            raise UnknownBase(name)
        if base.services is None:
            raise BaseNotReady(base.error or "not loaded yet")
        return base.services

    @contextmanager
    def lease(self, name: str) -> Iterator[Services]:
        """``name``'s services held for one request (a version swapped out meanwhile closes after it)."""
        services = self.services(name).acquire()
        try:
            yield services
        finally:
            services.release()

    def loaded(self) -> dict[str, Services]:
        """The bases that are loaded, by name."""
        with self._lock:
            return {n: b.services for n, b in sorted(self._bases.items()) if b.services is not None}

    def errors(self) -> dict[str, str]:
        """The bases that could not be loaded, with why."""
        with self._lock:
            return {n: b.error for n, b in sorted(self._bases.items()) if b.error is not None}

    def any_services(self) -> Services | None:
        """The default base's services, else any loaded base's (for model-level routes such as embeddings)."""
        loaded = self.loaded()
        return loaded.get(self.default or "") or next(iter(loaded.values()), None)

    # -- loading ----------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every base; one that fails is recorded (``errors``) and the others serve."""
        for name in self.names():
            self._try_load(name)

    def _try_load(self, name: str) -> bool:
        """:meth:`load`; a failure is recorded (``errors``) and logged when it is new, and the others serve."""
        try:
            self.load(name)
        except Exception as exc:  # noqa: BLE001 - reported per base instead of stopping the server
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                base = self._bases.get(name)
                if base is None:  # deleted meanwhile
                    return False
                changed, base.error = base.error != error, error
            if changed:  # the reload retries it: say so once
                log.error("could not load knowledge base %s: %s", name, exc)
            return False
        return True

    def load(self, name: str) -> Services:
        """Open ``name`` with the shared model of its manifest and warm it up."""
        settings = self.settings_for(name)
        manifest = read_manifest(settings.index)
        embedder = self._embedder(manifest, settings) if settings.serve.load_model else None
        services = build_services(settings, serving=True, embedder=embedder, load_model=embedder is not None)
        services.warm_up()
        with self._lock:
            self._bases[name].services, self._bases[name].error = services, None
        return services

    def _embedder(self, manifest: dict[str, Any], settings: Settings) -> Embedder:
        """This base's embedder: the model shared with every base built with it, its own instruction and
        query cache. The model is loaded on first use."""
        entry = manifest["embedder"]
        shares_instructions = entry.get("backend") == "sentence-transformers" and settings.serve.microbatch
        key = json.dumps(
            {k: v for k, v in entry.items() if k != "instruction" or not shares_instructions}, sort_keys=True
        )
        with self._loading:  # one load per model; requests go on meanwhile (they take only self._lock)
            with self._lock:
                worker = self._models.get(key)
            if worker is None:
                worker = model_worker(embedder_for_index(manifest, settings), settings, self.on_embed_batch)
                with self._lock:
                    self._models[key] = worker
        view = SharedModel(worker, entry.get("instruction")) if isinstance(worker, MicroBatcher) else worker
        return query_cache(view, settings)

    def models_loaded(self) -> int:
        """How many models are loaded (one per distinct model of the bases)."""
        with self._lock:
            return len(self._models)

    def swap_to_latest(self, name: str) -> Services | None:
        """Open ``name``'s newest version if it is not the one served, swap it in (requests in flight finish on
        the old one, released after them) and return it; ``None`` when nothing changed."""
        with self._loading:  # the live reload and a write job may both find the new version
            with self._lock:
                base = self._bases.get(name)
                current = base.services if base is not None else None
            if current is None:
                return None
            fresh = current.reopen()  # seconds on a large index: requests keep being served meanwhile
            if fresh is None:
                return None
            fresh.warm_up()
            with self._lock:
                still = self._bases.get(name)
                swapped = still is not None and still.services is current
                if swapped:
                    still.services = fresh  # type: ignore[union-attr]
        if not swapped:  # deleted meanwhile
            fresh.retire()
            return None
        current.retire()
        return fresh

    def discover(self) -> tuple[list[str], list[str]]:
        """Serve the bases created under the root since (``zhrag kb create``, an ingest into a new directory)
        and stop serving those whose directory is gone; returns (added, removed). One that fails to load is
        recorded (``errors``) and tried again on the next call."""
        if self.root is None:
            return [], []
        found = index_dirs(self.root)
        with self._lock:
            gone = [n for n, b in self._bases.items() if n not in found and not (b.path / CURRENT_FILE).exists()]
            for name in gone:
                base = self._bases.pop(name)
                if base.services is not None:
                    base.services.retire()
            new = [n for n in found if n not in self._bases or self._bases[n].services is None]
            for name in new:
                self._bases.setdefault(name, _Base(found[name]))
        return [name for name in new if self._try_load(name)], gone

    # -- creating and deleting --------------------------------------------------------------------
    def create(self, name: str, model: str | None = None, domain: str | None = None) -> Services:
        """Create an empty base ``name`` under the root and serve it: with ``model``, else the default base's (the
        model already loaded), else ``ZHRAG_MODEL``; ``domain`` else ``ZHRAG_DOMAIN``.

        Raises:
            ValueError: a bad name, or a model that cannot be loaded.
            BaseExists: a base (or a directory) of that name exists, or there is no root to create it in (a
                server of one ``--index``).
        """
        if self.root is None:
            raise BaseExists("this server serves one index (--index); start it with --root DIR to create bases")
        if not valid_base_name(name):
            raise InputError(f"{name!r} is not a knowledge base name (letters, digits, CJK, _ . -; no '/' or '..')")
        path = self.root / name
        if name in self.names() or path.exists():
            raise BaseExists(f"knowledge base {name!r} already exists")
        served = self.any_services()
        model = model or (
            served.index.manifest["embedder"]["model"] if served is not None else self.settings.embedding.model
        )
        update = {"index": path, "root": None, "model": model, "domain": domain or self.settings.embedding.domain}
        settings = self.settings.updated(**update)
        try:
            embedder = self._new_embedder(settings)
        except Exception as exc:  # noqa: BLE001 - an unknown or unreachable model is the caller's input
            raise InputError(f"cannot load the model {settings.embedding.model!r}: {exc}") from exc
        create_index(
            path,
            embedder,
            build_analyzer(settings),
            domain=settings.embedding.domain,
            connection=settings.milvus.connection,
        )
        return self.add(name, path)

    def _new_embedder(self, settings: Settings) -> Embedder:
        """An embedder to create a base with: a loaded model when one matches (no second copy), else loaded."""
        with self._lock:
            for key, worker in self._models.items():
                if json.loads(key).get("model") == settings.embedding.model and isinstance(worker, MicroBatcher):
                    return SharedModel(
                        worker, resolve_instruction(settings.embedding.instruction, settings.embedding.domain)
                    )
        return build_embedder(settings)

    def add(self, name: str, path: Path) -> Services:
        """Serve a base whose index was just created at ``path``."""
        with self._lock:
            if name in self._bases:
                raise BaseExists(f"knowledge base {name!r} already exists")
            self._bases[name] = _Base(path)
        try:
            return self.load(name)
        except BaseException:
            with self._lock:
                self._bases.pop(name, None)
            raise

    def remove(self, name: str) -> Path:
        """Stop serving ``name`` and delete its directory (after its requests in flight; its writer lock is
        taken first, so no write is half-way).

        Raises:
            UnknownBase: no such base. IndexLockedError: a write to it is running.
        """
        path = self.path(name)
        with reserve_writer(path):
            with self._lock:
                base = self._bases.pop(name)
            if base.services is not None:
                base.services.retire()
            shutil.rmtree(path, ignore_errors=True)
        return path

    def close(self) -> None:
        """Release every base and stop the shared models' workers."""
        with self._lock:
            bases, models = list(self._bases.values()), list(self._models.values())
            self._models.clear()
        for base in bases:
            if base.services is not None:
                base.services.close()
        for worker in models:
            worker.close()
