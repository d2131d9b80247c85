"""Kafka client options and factories: the only place aiokafka clients are built."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.registry import Topic
from storeops.settings import KafkaSettings

log = logging.getLogger(__name__)


def producer_options(kafka: KafkaSettings, client_id: str) -> dict[str, object]:
    """acks=all always: a write counts only once every in-sync replica has it."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id_prefix}-{client_id}",
        "acks": "all",
        "enable_idempotence": kafka.idempotence,
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_bytes,
        "request_timeout_ms": kafka.request_timeout_ms,
    }


def consumer_options(kafka: KafkaSettings, group_id: str | None, client_id: str) -> dict[str, object]:
    """Manual commits (after the effect is durable), from the earliest offset."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id_prefix}-{client_id}",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout,
        "heartbeat_interval_ms": kafka.heartbeat_interval,
        "max_poll_records": kafka.max_poll_records,
        "fetch_max_wait_ms": kafka.fetch_max_wait,
        "isolation_level": "read_uncommitted",
    }


def make_producer(kafka: KafkaSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_options(kafka, client_id))


def make_consumer(kafka: KafkaSettings, group_id: str | None, client_id: str) -> AIOKafkaConsumer:
    """A consumer with no subscription yet (``BatchConsumer.start`` subscribes)."""
    return AIOKafkaConsumer(**consumer_options(kafka, group_id, client_id))


async def ensure_topics(bootstrap_servers: str, topics: Iterable[Topic], replication_factor: int = 1) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="storeops-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=t.name,
                num_partitions=t.partitions,
                replication_factor=replication_factor,
                topic_configs={"cleanup.policy": t.cleanup_policy, **t.config},
            )
            for t in topics
            if t.name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another process created them in between: fine
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def broker_reachable(bootstrap_servers: str, timeout: float = 3.0) -> bool:
    """True when a metadata request succeeds within ``timeout`` seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001 - closing a half-started client may fail; nothing to do
            pass
