"""The document API over :mod:`app.usecases.documents`: add, list and delete the served index's documents,
the writes as jobs (followed at ``/jobs/{id}``, answered at once when they end within the wait)."""

from __future__ import annotations

import shutil
import tempfile
import threading
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
from app.api.errors import BLANK, ERROR_RESPONSES, JsonRoute, http_status
from app.api.limits import UploadRoute
from app.jobs import Job, JobQueue
from app.services import Services
from app.usecases import documents as use
from retrieval.index import UPLOAD_PREFIX

__all__ = ["router", "DocumentIn", "DocumentsIn", "DocumentPage", "DocumentsChanged", "COMPONENTS"]

router = APIRouter(tags=["documents"], responses=ERROR_RESPONSES, route_class=JsonRoute)
READ, WRITE = [Depends(Need("read"))], [Depends(Need("write"))]

MAX_FILES = 100
MAX_DOCUMENTS = 1000
UPLOAD_CHUNK = 1 << 20


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
    pages: int | None = Field(None, description="The last page its chunks come from (PDFs and scans)")


class DocumentPage(BaseModel):
    """A page of the index's documents, ordered by id."""

    total: int = Field(description="Documents in all (that match the name search)")
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


async def _save_uploads(request: Request, folder: Path) -> dict[str, str]:
    """Write the uploaded files under ``folder`` with sanitised names; returns {saved path: original name}."""
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    uploads = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
    if not uploads:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="send the documents as 'files' form fields")
    names: dict[str, str] = {}
    for upload in uploads:
        name = use.upload_name(upload.filename or "")
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
    return use.write_text_documents(folder, [doc.model_dump() for doc in documents])


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
        failed = http_status(job.failure) if job.failure is not None else status.HTTP_500_INTERNAL_SERVER_ERROR
        code = status.HTTP_409_CONFLICT if job.state == "cancelled" else failed
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


def _ingest_job(services: Services, folder: Path, names: dict[str, str]):
    """The work of an add job."""

    def run(cancel: threading.Event) -> dict[str, Any]:
        return use.add_documents(services, folder, names, cancel).to_dict()

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
    use.can_add(services)
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
    job = Job("add", size, _ingest_job(services, folder, names), folder, kb=request.state.kb)
    job = _jobs(request).submit(job)
    return await _answer(job, settings.serve.write_wait_s if wait is None else wait)


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
    offset: int = Query(0, ge=0, le=use.MAX_OFFSET),
    limit: int = Query(100, ge=1, le=use.MAX_LIST),
    q: str = Query("", max_length=use.MAX_NAME_BYTES, description="Only documents whose id or source holds this"),
) -> DocumentPage:
    """A page of documents with their chunk and page counts, ordered by id (``q``: a name search)."""
    page = use.list_documents(services, offset, limit, q)
    return DocumentPage(
        total=page.total,
        offset=page.offset,
        limit=page.limit,
        documents=[DocumentInfo(doc_id=r.doc_id, source=r.source, chunks=r.chunks, pages=r.pages) for r in page.rows],
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
        return use.delete_documents(index_dir, [doc_id], settings.milvus.connection).to_dict()

    job = _jobs(request).submit(Job("delete", 0, run, kb=kb))
    return await _answer(job, settings.serve.write_wait_s if wait is None else wait)


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
