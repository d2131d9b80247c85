"""storeops platform code shared by the services: settings, Kafka, database, logs, metrics."""

__version__ = "0.1.0"
