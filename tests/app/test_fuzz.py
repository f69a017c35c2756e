"""Schema-driven fuzzing of the whole HTTP API (schemathesis over the app's own OpenAPI): never a 5xx."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from app.api import create_app
from app.services import build_services
from app.settings import Settings
from tests.app.conftest import serve

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 150
WRITE_EXAMPLES = 25  # each accepted one ingests and publishes a version


def test_no_generated_request_makes_the_server_fail(sample_index: Path, tmp_path: Path) -> None:
    """Valid and invalid requests generated for every operation of the OpenAPI schema: 2xx or 4xx only.

    (schemathesis' own pytest fixture loader does not run under pytest 9, so the operations are walked here.)
    It runs on a copy of the sample index: the document routes change what they are given.
    """
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    services = build_services(Settings(index=index))
    app = create_app(Settings(index=index, api_keys=KEY, reload_interval=0), load=False)
    serve(app, services)  # as the lifespan would; a write swaps in the version it publishes
    headers = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /search", "POST /embed", "POST /v1/embeddings", "POST /retrieval", "GET /ready"} <= paths
    statuses: list[int] = []
    for operation in operations:
        if operation.path == "/ready":
            continue  # its 503 "not ready" is the contract here: the test app's lifespan loads nothing

        examples = (
            WRITE_EXAMPLES
            if operation.method.upper() in ("POST", "DELETE") and "documents" in operation.path
            else EXAMPLES
        )

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            statuses.append(case.call_and_validate(headers=headers, checks=[not_a_server_error]).status_code)

        fuzz()
    app.state.bases.any_services().close()
    # Both accepted and refused requests were generated, for many operations.
    assert len(statuses) > 3 * EXAMPLES and 200 in statuses and 422 in statuses
