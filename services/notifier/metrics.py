from prometheus_client import Counter

STORED = Counter("storeops_notifier_notifications_stored_total", "Notifications stored, by channel", ["channel"])
