"""The document API: add, list and delete the served index's documents; every change publishes a new version.

Uploads go through the same pipeline as ``zhrag ingest`` (limits, loaders, chunkers, the served model via
its micro-batcher) into a new version that is swapped in before the answer; a request that cannot use
every file or record publishes nothing. One writer at a time: a second one gets 409.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile

from app.api.deps import ServicesDep
from app.api.errors import BLANK, ERROR_RESPONSES, JsonRoute
from app.api.serving import serve_latest
from app.services import Services, ingest_limits
from ingest.chunkers import ChunkSettings
from ingest.loaders import SUPPORTED_SUFFIXES
from ingest.pipeline import IngestOptions, IngestRejected, NothingToIngest, ingest, remove_documents
from retrieval.index import UPLOAD_PREFIX, IndexLockedError

__all__ = ["router", "DocumentIn", "DocumentsIn", "DocumentPage", "DocumentsChanged", "safe_file_name", "COMPONENTS"]

router = APIRouter(tags=["documents"], responses=ERROR_RESPONSES, route_class=JsonRoute)

MAX_FILES = 100
MAX_DOCUMENTS = 1000
MAX_NAME_BYTES = 200
UPLOAD_CHUNK = 1 << 20
MAX_OFFSET = 10**12


class DocumentIn(BaseModel):
    """One document given as text (other fields go in ``metadata``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="Document id (the same id replaces it)")
    text: str = Field(min_length=1, pattern=BLANK)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict, description="Stored with every chunk; filterable")


class DocumentsIn(BaseModel):
    """Several documents given as text."""

    model_config = ConfigDict(strict=True, extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class DocumentInfo(BaseModel):
    """An indexed document."""

    doc_id: str
    source: str
    chunks: int


class DocumentPage(BaseModel):
    """A page of the index's documents, ordered by id."""

    total: int
    offset: int
    limit: int
    documents: list[DocumentInfo]


class DocumentsChanged(BaseModel):
    """What a change did and the version now served."""

    version: str
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_removed: list[str] = Field(default_factory=list)
    chunks: int = 0
    total_documents: int
    total_chunks: int
    warnings: list[str] = Field(default_factory=list)


_TEXT_BODY = TypeAdapter(DocumentIn | DocumentsIn)
COMPONENTS: dict[str, Any] = models_json_schema(
    [(DocumentIn, "validation"), (DocumentsIn, "validation")], ref_template="#/components/schemas/{model}"
)[1]["$defs"]
"""The JSON bodies' schemas, for the OpenAPI document's components (the route reads its body itself)."""
_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/DocumentIn"},
                        {"$ref": "#/components/schemas/DocumentsIn"},
                    ]
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


def safe_file_name(name: str) -> str:
    """An uploaded file's name as it may be stored: its last path component, NFC, printable, not hidden.

    Raises:
        ValueError: when nothing usable is left.
    """
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*').strip().lstrip(".")
    while len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, suffix = base.rpartition(".")
        base = f"{stem[:-1]}{dot}{suffix}" if dot and stem else base[:-1]
    if not base or base in (".", ".."):
        raise ValueError(f"unusable file name {name!r}")
    return base


def _services(services: Services) -> Services:
    if services.embedder is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="adding documents needs the embedding model")
    return services


async def _save_uploads(request: Request, folder: Path) -> dict[str, str]:
    """Write the uploaded files under ``folder`` with sanitised names; returns {saved path: original name}."""
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    uploads = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
    if not uploads:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="send the documents as 'files' form fields")
    names: dict[str, str] = {}
    for upload in uploads:
        try:
            name = safe_file_name(upload.filename or "")
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
        if Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                detail=f"{name}: unsupported file type; send {' '.join(SUPPORTED_SUFFIXES)}",
            )
        target = folder / name
        if str(target) in names:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{name} was sent twice")
        with open(target, "wb") as fh:
            while chunk := await upload.read(UPLOAD_CHUNK):
                fh.write(chunk)
        names[str(target)] = name
    return names


async def _text_documents(request: Request, folder: Path) -> dict[str, str]:
    try:
        body = _TEXT_BODY.validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from exc
    documents = body.documents if isinstance(body, DocumentsIn) else [body]
    target = folder / "documents.jsonl"
    with open(target, "w", encoding="utf-8") as fh:
        for doc in documents:
            record = {**doc.metadata, "id": doc.id, "text": doc.text, "title": doc.title}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {str(target): "api"}


def _shown(text: str, names: dict[str, str]) -> str:
    for saved, name in names.items():
        text = text.replace(saved, name)
    return text


@router.post(
    "/documents",
    response_model=DocumentsChanged,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Add or replace documents (files or JSON) and publish a new index version",
)
async def add_documents(request: Request, services: ServicesDep) -> DocumentsChanged:
    """Upload files (multipart ``files``) or send ``{id, text, title, metadata}`` / ``{"documents": [...]}``.

    415 for an unsupported file type, 422 naming every file or record that cannot be used (then nothing is
    published), 409 while another writer holds the index.
    """
    services = _services(services)
    settings = request.app.state.settings
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # inside the index: a server killed mid-upload leaves it where the next start-up removes it
    with tempfile.TemporaryDirectory(prefix=UPLOAD_PREFIX, dir=settings.index) as tmp:
        folder = Path(tmp)
        if media == "multipart/form-data":
            names = await _save_uploads(request, folder)
        else:
            names = await _text_documents(request, folder)
        options = IngestOptions(
            workers=1,  # never fork a serving process
            limits=ingest_limits(settings),
            all_or_nothing=True,
            source_names=names,
        )
        manifest = services.index.manifest
        run = partial(
            ingest,
            [folder],
            settings.index,
            services.embedder,
            services.analyzer,
            ChunkSettings(**manifest.get("chunker", {})),
            progress=False,
            options=options,
        )
        try:
            summary = await anyio.to_thread.run_sync(run)
        except IndexLockedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
        except (IngestRejected, NothingToIngest) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=_shown(str(exc), names)) from exc
    await serve_latest(request.app)
    return DocumentsChanged(
        version=summary.version,
        documents_indexed=summary.documents_indexed,
        documents_unchanged=summary.documents_unchanged,
        chunks=summary.chunks,
        total_documents=summary.total_documents,
        total_chunks=summary.total_chunks,
        warnings=[_shown(w["reason"], names) for w in summary.warnings],
    )


@router.get("/documents", response_model=DocumentPage, summary="List the served index's documents")
def list_documents(
    services: ServicesDep,
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(100, ge=1, le=1000),
) -> DocumentPage:
    """A page of documents with their chunk counts, ordered by id."""
    docs = services.index.docs
    rows = docs.list_documents(offset, limit)
    return DocumentPage(
        total=docs.count_documents(),
        offset=offset,
        limit=limit,
        documents=[DocumentInfo(doc_id=d, source=s, chunks=n) for d, s, n in rows],
    )


@router.delete(
    "/documents/{doc_id:path}", response_model=DocumentsChanged, summary="Delete a document and publish the change"
)
async def delete_document(doc_id: str, request: Request, services: ServicesDep) -> DocumentsChanged:
    """Remove one document (404 when the index does not hold it)."""
    settings = request.app.state.settings
    try:
        removal = await anyio.to_thread.run_sync(remove_documents, settings.index, [doc_id])
    except IndexLockedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if not removal.removed:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no document {doc_id!r} in the index")
    await serve_latest(request.app)
    index = request.app.state.services.index
    return DocumentsChanged(
        version=removal.version,
        documents_removed=removal.removed,
        total_documents=index.docs.count_documents(),
        total_chunks=index.docs.count(),
    )
