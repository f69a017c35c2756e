"""Schema-driven fuzzing of the whole HTTP API (schemathesis over the app's own OpenAPI): never a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from app.api import create_app
from app.api.deps import get_services
from app.services import Services
from app.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 150


def test_no_generated_request_makes_the_server_fail(services: Services, sample_index: Path) -> None:
    """Valid and invalid requests generated for every operation of the OpenAPI schema: 2xx or 4xx only.

    (schemathesis' own pytest fixture loader does not run under pytest 9, so the operations are walked here.)
    """
    app = create_app(Settings(index=sample_index, api_keys=KEY), load=False)
    app.dependency_overrides[get_services] = lambda: services
    headers = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /search", "POST /embed", "POST /v1/embeddings", "POST /retrieval", "GET /ready"} <= paths
    statuses: list[int] = []
    for operation in operations:
        if operation.path == "/ready":
            continue  # its 503 "not ready" is the contract here: the test app's lifespan loads nothing

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            statuses.append(case.call_and_validate(headers=headers, checks=[not_a_server_error]).status_code)

        fuzz()
    # Both accepted and refused requests were generated, for many operations.
    assert len(statuses) > 3 * EXAMPLES and 200 in statuses and 422 in statuses
