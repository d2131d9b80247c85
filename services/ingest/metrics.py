from prometheus_client import Counter, Histogram

EVENTS = Counter("storeops_ingest_events_total", "Events received, by topic and outcome", ["topic", "outcome"])
PRODUCE_SECONDS = Histogram(
    "storeops_ingest_produce_seconds",
    "Time from the first send to the broker's last acknowledgement, per request",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
