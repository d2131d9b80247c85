"""rules: turns store events into actions (built-in rules for now)."""
