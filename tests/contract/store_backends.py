"""Backends of the store contract suite: every contract test runs once per backend, on a database of its own.

- ``embedded``: the session's nx-27017 server (``nx_server`` in tests/conftest.py, on 127.0.0.1, stopped at the
  end of the session), a fresh database per test;
- ``mongodb``: only when ``FK_TEST_MONGO_URL`` is set, the MongoDB at that URL, in one database with a unique name
  per test session, emptied after every test and dropped at the end.

The test modules import the fixtures from here (``from store_backends import ...``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pymongo
import pytest
from pymongo.database import Database

from fedkeeper.store import Store

MONGO_URL_ENV = "FK_TEST_MONGO_URL"
BACKENDS = ["embedded"] + (["mongodb"] if os.environ.get(MONGO_URL_ENV) else [])


@dataclass(frozen=True)
class Backend:
    """A server and a database on it that this test may use freely."""

    name: str
    url: str
    db: Database


@pytest.fixture(scope="session")
def external_mongo() -> Iterator[tuple[str, Database]]:
    """(URL, database) on the MongoDB at FK_TEST_MONGO_URL; the database is dropped when the session ends."""
    url = os.environ[MONGO_URL_ENV]
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
    name = f"fk_test_{uuid.uuid4().hex[:12]}"
    try:
        yield url, client[name]
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "embedded":
        yield Backend("embedded", request.getfixturevalue("nx_server"), request.getfixturevalue("nx_db"))
        return
    url, db = request.getfixturevalue("external_mongo")
    try:
        yield Backend("mongodb", url, db)
    finally:
        for name in db.list_collection_names():
            db.drop_collection(name)


@pytest.fixture
def store(backend: Backend) -> Store:
    """The Store as open_store leaves it (indexes created); keeps the newest 2 global models."""
    s = Store(backend.db, url=backend.url, keep_models=2)
    s.ensure_indexes()
    return s


@pytest.fixture
def small_inline(backend: Backend) -> Store:
    """A Store whose blobs above 512 bytes go to GridFS, so the GridFS paths run on small models."""
    s = Store(backend.db, url=backend.url, keep_models=2, inline_limit=512)
    s.ensure_indexes()
    return s
