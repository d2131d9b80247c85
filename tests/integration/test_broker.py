"""The broker launcher: embedded start and stop, external attach, refusal when nothing answers."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.registry import REGISTRY
from storeops_cli.broker import BrokerError, free_port, start_broker, start_embedded, start_external

pytestmark = pytest.mark.integration


async def test_embedded_broker_has_every_registered_topic_and_stops_cleanly() -> None:
    broker = await asyncio.to_thread(start_embedded)  # it runs its own event loop
    host, port = broker.bootstrap_servers.split(":")
    try:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        await consumer.start()
        try:
            await consumer.topics()  # loads metadata for every topic
            for topic in REGISTRY:
                assert len(consumer.partitions_for_topic(topic.name) or ()) == topic.partitions, topic.name
        finally:
            await consumer.stop()
    finally:
        broker.stop()
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass


def test_kafka_bootstrap_servers_wins(broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    attached = start_broker()
    try:
        assert (attached.kind, attached.bootstrap_servers, attached.flavor) == ("external", broker.bootstrap_servers, "kafka")
    finally:
        attached.stop()  # must not stop the broker it merely attached to
    assert start_external(broker.bootstrap_servers).kind == "external"


def test_unreachable_broker_is_refused_with_its_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError, match=address):
        start_external(address, timeout=1.0)
