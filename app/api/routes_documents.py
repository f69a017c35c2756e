"""The document API: add, list and delete the served index's documents; every change publishes a new version.

Uploads go through the same pipeline as ``zhrag ingest`` (limits, loaders, chunkers, the served model via
its micro-batcher) into a new version that is swapped in before the answer; a request that cannot use
every file or record publishes nothing. One writer at a time: a second one gets 409.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile

from app.access import AccessDenied
from app.api.auth import Need
from app.api.deps import ServicesDep, resolve_base
from app.api.errors import BLANK, ERROR_RESPONSES, JsonRoute
from app.api.limits import UploadRoute
from app.jobs import Job, JobQueue
from app.services import Services, ingest_limits
from ingest.chunkers import ChunkSettings
from ingest.loaders import SUPPORTED_SUFFIXES
from ingest.pipeline import IngestOptions, IngestRejected, NothingToIngest, ingest, remove_documents
from retrieval.index import UPLOAD_PREFIX, IndexLockedError, LiveDocs

__all__ = ["router", "DocumentIn", "DocumentsIn", "DocumentPage", "DocumentsChanged", "safe_file_name", "COMPONENTS"]

router = APIRouter(tags=["documents"], responses=ERROR_RESPONSES, route_class=JsonRoute)
READ, WRITE = [Depends(Need("read"))], [Depends(Need("write"))]

MAX_FILES = 100
MAX_DOCUMENTS = 1000
MAX_NAME_BYTES = 200
UPLOAD_CHUNK = 1 << 20
MAX_OFFSET = 10**12
JOB_SHARD_CHUNKS = 256
"""Chunks embedded between two looks at a job's cancel."""


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


class JobOut(BaseModel):
    """A write job: follow it at ``GET /jobs/{id}``, cancel it with ``DELETE /jobs/{id}``."""

    id: str
    kind: Literal["add", "delete"]
    kb: str = Field(description="The knowledge base it writes to")
    state: Literal["queued", "running", "published", "failed", "cancelled"]
    created: float
    started: float | None = None
    finished: float | None = None
    result: DocumentsChanged | None = Field(None, description="What a published job did")
    error: str | None = Field(None, description="Why a job failed or was cancelled (nothing was published)")


_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobOut, "description": "Not done yet: a job to follow (Location: /jobs/{id})"}
}


def _jobs(request: Request) -> JobQueue:
    return request.app.state.jobs


async def _answer(job: Job, wait_s: float) -> DocumentsChanged | JSONResponse:
    """The result when the job ends within ``wait_s`` (its error as the answer's), else 202 and the job."""
    await anyio.to_thread.run_sync(job.done.wait, wait_s)
    if job.state == "published" and job.result is not None:
        return DocumentsChanged(**job.result)
    if job.state in ("failed", "cancelled"):
        code = job.error_status or (status.HTTP_409_CONFLICT if job.state == "cancelled" else 422)
        raise HTTPException(code, detail=job.error or job.state)
    body = JobOut(**job.to_dict()).model_dump(mode="json")
    return JSONResponse(status_code=status.HTTP_202_ACCEPTED, content=body, headers={"Location": f"/jobs/{job.id}"})


def _job_of(request: Request, job_id: str) -> Job:
    """A job of a base the caller may write to (404 for any other, as for an unknown one)."""
    job = _jobs(request).get(job_id)
    missing = f"no job {job_id!r} (unknown or long finished)"
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing)
    try:
        request.app.state.access.check(request.state.grant, "write", job.kb)
    except AccessDenied as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing) from exc
    return job


def _ingest_job(request: Request, services: Services, folder: Path, names: dict[str, str]):
    """The work of an add job: the pipeline over the saved files, in a fresh worker process (the per-file
    time limit holds there), cancellable between files and shards, all or nothing."""
    settings = services.settings  # the base's
    embedder, analyzer, chunker = services.embedder, services.analyzer, services.index.manifest.get("chunker", {})

    def run(cancel: threading.Event) -> dict[str, Any]:
        options = IngestOptions(
            workers=1,
            isolated=True,
            limits=ingest_limits(settings),
            all_or_nothing=True,
            source_names=names,
            cancel=cancel,
            shard_chunks=JOB_SHARD_CHUNKS,
            connection=settings.store_connection,
        )
        try:
            summary = ingest(
                [folder], settings.index, embedder, analyzer, ChunkSettings(**chunker), progress=False, options=options
            )
        except IndexLockedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
        except (IngestRejected, NothingToIngest) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=_shown(str(exc), names)) from exc
        return DocumentsChanged(
            version=summary.version,
            documents_indexed=summary.documents_indexed,
            documents_unchanged=summary.documents_unchanged,
            chunks=summary.chunks,
            total_documents=summary.total_documents,
            total_chunks=summary.total_chunks,
            warnings=[_shown(w["reason"], names) for w in summary.warnings],
        ).model_dump()

    return run


WaitQuery = Annotated[
    float | None,
    Query(ge=0, le=60, description="Seconds to wait for the result before answering 202 (default ZHRAG_WRITE_WAIT_S)"),
]


async def add_documents(request: Request, services: ServicesDep, wait: WaitQuery = None):
    """Upload files (multipart ``files``) or send ``{id, text, title, metadata}`` / ``{"documents": [...]}``.

    The write is a job: done within ``wait`` seconds, the answer is what it did (200); else 202 with the job
    to follow at ``GET /jobs/{id}``. 415 for an unsupported file type, 422 naming every file or record that
    cannot be used (then nothing is published), 409 while another writer holds the index.
    """
    services = _services(services)
    settings = services.settings  # the base's
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # inside the index: a server killed mid-upload leaves it where the next start-up removes it
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=settings.index))
    try:
        if media == "multipart/form-data":
            names = await _save_uploads(request, folder)
        else:
            names = await _text_documents(request, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in folder.iterdir())
    job = Job("add", size, _ingest_job(request, services, folder, names), folder, kb=request.state.kb)
    job = _jobs(request).submit(job)
    return await _answer(job, settings.write_wait_s if wait is None else wait)


router.add_api_route(
    "/documents",
    add_documents,
    methods=["POST"],
    route_class_override=UploadRoute,  # its body may be up to ZHRAG_MAX_UPLOAD_BYTES
    dependencies=WRITE,
    response_model=DocumentsChanged,
    responses=_WRITE_RESPONSES,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Add or replace documents (files or JSON) and publish a new index version",
)


@router.get("/documents", dependencies=READ, response_model=DocumentPage, summary="List a knowledge base's documents")
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
    "/documents/{doc_id:path}",
    dependencies=WRITE,
    response_model=DocumentsChanged,
    responses=_WRITE_RESPONSES,
    summary="Delete a document and publish the change",
)
async def delete_document(doc_id: str, request: Request, wait: WaitQuery = None):
    """Remove one document (404 when the index does not hold it); a job like an upload."""
    settings = request.app.state.settings
    kb = resolve_base(request)
    index_dir = request.app.state.bases.path(kb)

    def run(_cancel: threading.Event) -> dict[str, Any]:
        try:
            removal = remove_documents(index_dir, [doc_id], settings.store_connection)
        except IndexLockedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
        if not removal.removed:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no document {doc_id!r} in the index")
        live = LiveDocs(index_dir)
        try:
            totals = live.docs.count_documents(), live.docs.count()
        finally:
            live.close()
        return DocumentsChanged(
            version=removal.version,
            documents_removed=removal.removed,
            total_documents=totals[0],
            total_chunks=totals[1],
        ).model_dump()

    job = _jobs(request).submit(Job("delete", 0, run, kb=kb))
    return await _answer(job, settings.write_wait_s if wait is None else wait)


@router.get("/jobs/{job_id}", dependencies=WRITE, response_model=JobOut, summary="Follow a write job")
def get_job(job_id: str, request: Request) -> JobOut:
    """Where a write stands: queued, running, published (with what it did), failed or cancelled (with why)."""
    return JobOut(**_job_of(request, job_id).to_dict())


@router.delete(
    "/jobs/{job_id}", dependencies=WRITE, response_model=JobOut, summary="Cancel a write job before it publishes"
)
async def cancel_job(job_id: str, request: Request) -> JobOut:
    """Cancel a queued or running job: it publishes nothing and releases the writer. The answer is its final
    state, and the job is forgotten (``GET`` then 404). A published job stays published (409)."""
    jobs = _jobs(request)
    job = _job_of(request, job_id)
    if job.state == "published":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} already published {job.result}")
    jobs.cancel(job_id)
    await anyio.to_thread.run_sync(job.done.wait, 30)
    if job.state == "published":  # it published before the cancel reached it
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} published before it could be cancelled")
    jobs.forget(job_id)
    return JobOut(**job.to_dict())
