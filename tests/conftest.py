"""Shared fixtures: hermetic nats-server processes (single node and a 3-node cluster) and clients.

Tests never use the machine's shared server on 4222: each session starts its own on a free port with
JetStream in a temporary store. When the ``nats-server`` binary is missing the fixtures fail with an error
that says how to install it (Debian's ``nats-server`` package).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from bus.embedded import NatsCluster, NatsServerProcess


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServerProcess]:
    """One nats-server (JetStream on) for the whole test session."""
    srv = NatsServerProcess.start(name="trinity-test-session")
    yield srv
    srv.close()


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServerProcess]:
    """A nats-server of this test's own (for tests that kill or restart it)."""
    srv = NatsServerProcess.start(name="trinity-test-fresh")
    yield srv
    srv.close()


@pytest.fixture
def fresh_nats_cluster() -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own, for tests that kill or restart its nodes."""
    cluster = NatsCluster.start(3)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster on loopback for the whole test session."""
    cluster = NatsCluster.start(3)
    yield cluster
    cluster.close()


@pytest.fixture
async def nc(nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    """A client connected to the session's nats-server, drained after the test."""
    client = await nats.connect(nats_server.url, name="pytest")
    yield client
    if not client.is_closed:
        await client.drain()
