"""Shared fixtures: a real nats-server per session (or per test where state would leak),
domed's services against it, and a client that speaks the public API."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.runtime.natsserver import NatsServer
from tests.support import Domed, make_ssot, srv_of

ROOT = Path(__file__).resolve().parents[1]

# The executor passes PATH through to tools; make `python3` the interpreter running the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("domed")


@pytest.fixture(scope="session")
def ssot(session_dir: Path) -> Path:
    return make_ssot(session_dir / "ssot")


@pytest.fixture(scope="session")
def srv(ssot: Path) -> Path:
    """Stands in for /srv/domed: the session catalogue's real tools have their roots here
    (``files``, ``archives``, ``suites``)."""
    return srv_of(ssot)


@pytest.fixture(scope="session")
def nats_server(session_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=session_dir / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of the test's own, for tests that need an empty stream or kill the server."""
    server = NatsServer(store_dir=tmp_path / "nats").start()
    yield server
    server.kill() if server.process and server.process.poll() is None else None
    shutil.rmtree(tmp_path / "nats", ignore_errors=True)


@pytest.fixture(scope="session")
async def domed(nats_server: NatsServer, ssot: Path, session_dir: Path) -> AsyncIterator[Domed]:
    """Router, executor and projector running in this process against the session server."""
    async with Domed.running(nats_server.url, ssot, session_dir / "data") as d:
        yield d


@pytest.fixture
async def fresh_domed(fresh_server: NatsServer, ssot: Path, tmp_path: Path) -> AsyncIterator[Domed]:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data") as d:
        yield d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath) and asyncio.iscoroutinefunction(
            getattr(item, "function", None)
        ):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))


_ = asyncio
