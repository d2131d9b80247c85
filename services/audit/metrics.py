from prometheus_client import Counter

RECORDED = Counter("storeops_audit_records_stored_total", "Records written to the audit store")
