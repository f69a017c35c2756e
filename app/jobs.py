"""Writes through the API as jobs: queued, run one at a time (one writer per index), followed and cancelled.

A job publishes a new index version or nothing: a cancelled or failed one releases the writer lock and leaves
the index as it was. The queue is fair: the smallest waiting job runs next, unless one has waited longer than
``STARVE_S`` (then the oldest), so a huge upload does not hold small ones for minutes.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retrieval.errors import UserError

__all__ = ["Job", "JobQueue", "JobState", "JobCancelled"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "published", "failed", "cancelled"]
STARVE_S = 60.0
KEEP_FINISHED = 1000
"""Finished jobs remembered for ``GET /jobs/{id}`` (the oldest are forgotten first)."""


class JobCancelled(Exception):
    """The job was cancelled before it published."""


def _spent(_cancel: threading.Event) -> dict[str, Any]:
    raise RuntimeError("this job has already run")


@dataclass
class Job:
    """One write: what it is, where it stands, and what it did."""

    kind: Literal["add", "delete"]
    size: int
    """Bytes to ingest (the fairness key)."""
    run: Callable[[threading.Event], dict[str, Any]]
    """Does the work, honouring the event (cancel); returns the result body."""
    folder: Path | None = None
    """Uploaded files, removed when the job ends."""
    kb: str = ""
    """The knowledge base it writes to."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    failure: type[Exception] | None = None
    """The kind of error a failed job raised (a use case's refusal says what the client can fix); only the
    kind is kept: an exception's traceback would keep the job's frames, and so a retired index, alive."""
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        """The body of ``GET /jobs/{id}``."""
        return {
            "id": self.id,
            "kind": self.kind,
            "kb": self.kb,
            "state": self.state,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
            "error": self.error,
        }


class JobQueue:
    """The server's write jobs on one worker thread.

    Args:
        on_published: Called (in the worker) after a job published, e.g. to serve the new version.
        maintain: Called (in the worker) with a knowledge base a job published to, while no job waits: one
            step of upkeep (merging its segments), true while there is more to do. Jobs never wait for more
            than the step under way.
    """

    def __init__(
        self, on_published: Callable[[Job], None] | None = None, maintain: Callable[[str], bool] | None = None
    ) -> None:
        self.on_published = on_published
        self.maintain = maintain
        self._untidy: set[str] = set()  # bases written since their upkeep last finished
        self._jobs: dict[str, Job] = {}
        self._waiting: list[Job] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="zhrag-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the server is stopping")
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._changed.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        """A job by id (``None``: unknown or long forgotten)."""
        with self._changed:
            return self._jobs.get(job_id)

    def unfinished(self) -> list[Job]:
        """Jobs queued or running, oldest first."""
        with self._changed:
            return sorted((j for j in self._jobs.values() if not j.done.is_set()), key=lambda j: j.created)

    def forget(self, job_id: str) -> None:
        """Drop a finished job from the registry (``GET /jobs/{id}`` then answers 404)."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is not None and job.done.is_set():
                del self._jobs[job_id]

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (a published one stays published)."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job.state == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled", error="cancelled before it started")
            return job

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what waits, let the running job see its cancel, stop the worker."""
        with self._changed:
            self._closed = True
            for job in self._waiting:
                job.cancel.set()
                self._finish(job, "cancelled", error="the server stopped")
            self._waiting.clear()
            for job in self._jobs.values():
                job.cancel.set()
            self._changed.notify()
        self._thread.join(timeout)

    def _next(self) -> Job | None:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if not self._waiting:
                return None
            now = time.time()
            starving = [j for j in self._waiting if now - j.created > STARVE_S]
            job = min(starving, key=lambda j: j.created) if starving else min(self._waiting, key=lambda j: j.size)
            self._waiting.remove(job)
            job.state, job.started = "running", now
            return job

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                result = job.run(job.cancel)
            except (JobCancelled, KeyboardInterrupt):
                self._finish(job, "cancelled", error="cancelled; nothing was published")
            except Exception as exc:  # noqa: BLE001 - reported through GET /jobs/{id}
                if not isinstance(exc, UserError):
                    log.exception("job %s failed", job.id)
                self._finish(job, "failed", error=str(exc), failure=type(exc))
            else:
                if self.on_published is not None:  # served before the job says so: a client reads its write
                    try:
                        self.on_published(job)
                    except Exception:  # noqa: BLE001 - the live reload picks the version up too
                        log.exception("could not serve the version job %s published", job.id)
                self._finish(job, "published", result=result)
                self._untidy.add(job.kb)
            self._upkeep()

    def _upkeep(self) -> None:
        """Run upkeep steps for the bases written, one at a time, until a job waits or all is done."""
        while self.maintain is not None and self._untidy:
            with self._changed:
                if self._waiting or self._closed:
                    return
            kb = min(self._untidy)
            try:
                more = self.maintain(kb)
            except Exception:  # noqa: BLE001 - upkeep is retried after the base's next write
                log.exception("upkeep of knowledge base %r failed", kb)
                more = False
            if not more:
                self._untidy.discard(kb)

    def _finish(
        self,
        job: Job,
        state: JobState,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        failure: type[Exception] | None = None,
    ) -> None:
        job.state, job.result, job.error, job.failure = state, result, error, failure
        job.run = _spent  # what the work held (a served version, its model) is not kept with the record
        job.finished = time.time()
        if job.folder is not None:
            shutil.rmtree(job.folder, ignore_errors=True)
        job.done.set()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.done.is_set()]
        for job in sorted(finished, key=lambda j: j.finished or 0)[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
