"""audit: sinks every record of every topic with its origin; search by entity and time."""
