from prometheus_client import Counter

RECORDED = Counter("storeops_audit_records_stored_total", "Records written to the audit store")
CONFLICTS = Counter("storeops_audit_conflicts_total", "Records stored again because they came back with their id and other content")
CHECKPOINTS = Counter("storeops_audit_checkpoints_total", "Chain checkpoints signed")
RETRIES = Counter("storeops_audit_link_retries_total", "Batches linked again because a chain or record was written meanwhile")
