from prometheus_client import Counter

STORED = Counter("storeops_notifier_notifications_stored_total", "Notifications stored, by channel", ["channel"])
# result: accepted | duplicate | refused (schemas.notifications.RequestStatus)
REQUESTS = Counter("storeops_notifier_requests_total", "Requests handed over by other services, by channel and result",
                   ["channel", "result"])
