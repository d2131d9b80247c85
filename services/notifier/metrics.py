from prometheus_client import Counter, Gauge, Histogram

STORED = Counter("storeops_notifier_notifications_stored_total", "Notifications stored, by channel", ["channel"])
# result: accepted | duplicate | refused (schemas.notifications.RequestStatus)
REQUESTS = Counter("storeops_notifier_requests_total", "Requests handed over by other services, by channel and result",
                   ["channel", "result"])

# --- deliveries (services.notifier.ledger); outcome: delivered | retry | failed | gone (ledger.Attempt)
ATTEMPTS = Counter("storeops_notifier_delivery_attempts_total", "Delivery attempts, by channel and outcome",
                   ["channel", "outcome"])
LATENCY = Histogram("storeops_notifier_delivery_latency_seconds", "Time of one delivery attempt, by channel", ["channel"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0))
# kind: endpoint_disabled | delivery_dead (ledger.Trouble)
TROUBLE = Counter("storeops_notifier_delivery_trouble_total", "Endpoints disabled and deliveries dead-lettered", ["kind"])
# Per route (endpoint:<id>, url:<host>, smtp:<host:port>): set when the metrics are scraped (services.notifier.webhooks)
ROUTE_UP = Gauge("storeops_notifier_route_state", "1 for the route's current state (healthy, failing, disabled), else 0",
                 ["route", "state"])
ROUTE_STREAK = Gauge("storeops_notifier_route_failure_streak", "Failed attempts since the route's last success", ["route"])
ROUTE_QUEUE = Gauge("storeops_notifier_route_queue_depth", "Deliveries pending or in flight", ["route"])
ROUTE_LAST_SUCCESS = Gauge("storeops_notifier_route_last_success_timestamp_seconds", "When the route last delivered",
                           ["route"])
