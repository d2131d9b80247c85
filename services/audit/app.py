"""audit: consumes every registered topic and keeps each record with its origin."""

from pathlib import Path

from schemas.registry import ACTIONS, AUDIT, COMMANDS, DEADLETTER, EVENT_TOPICS, EXCEPTIONS, NOTIFICATIONS, RULE_RUNS
from services.audit import agents, api
from services.audit.settings import AuditSettings
from services.audit.store import OUTBOX, Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="audit",
    settings=AuditSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations",
    outbox=OUTBOX,
    # Audit reads every topic. It owns (dead-letters the unreadable records of) those no
    # other service consumes; on the others the owning service dead-letters and audit
    # counts and skips, so each bad record has one dead letter.
    consumes=(RULE_RUNS, COMMANDS, NOTIFICATIONS, AUDIT, DEADLETTER),
    watches=(*EVENT_TOPICS, ACTIONS, EXCEPTIONS),
    handler=agents.handler,
    state=agents.state,
    background=agents.sweeps,
    # The recorder stores every well-formed envelope as it was on its topic; a
    # record whose data breaks its contract is also dead-lettered by its domain
    # consumer. Full validation here cost half of audit's time (profiled).
    decoding="envelope",
    description="Every record of every topic as an audit entry: searchable, exportable, hash-chained.",
)
