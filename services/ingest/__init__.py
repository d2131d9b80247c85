"""ingest: validates store events over HTTP and produces them, answering after the broker's ack."""
