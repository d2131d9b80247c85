"""exceptions: the severity-ranked queue of problems that need a person."""
