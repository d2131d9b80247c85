from prometheus_client import Counter

CREATED = Counter("storeops_exceptions_created_total", "Exceptions added to the queue")
CHANGES = Counter("storeops_exceptions_changes_total", "Changes to exceptions, by kind", ["kind"])
