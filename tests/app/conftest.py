"""Fixtures for the API tests: services over the sample index, and a client with them injected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import create_app
from app.bases import KnowledgeBases
from app.services import Services, build_services
from app.settings import Settings

API_KEY = "secret"


@pytest.fixture(scope="module")
def services(sample_index: Path) -> Services:
    """The real composition (tiny model from the manifest) over the sample index."""
    return build_services(Settings(index=sample_index))


def serve(app: FastAPI, services: Services) -> FastAPI:
    """``app`` (created with ``load=False``) serving ``services`` as its one knowledge base, as the lifespan would."""
    app.state.bases = KnowledgeBases.serving(app.state.settings, {services.index.root.name: services})
    return app


@pytest.fixture()
def client(services: Services) -> Iterator[TestClient]:
    """A test client serving the module's services; it sends the server's API key."""
    app = serve(create_app(Settings(index=services.index.root, api_key=API_KEY), load=False), services)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c
