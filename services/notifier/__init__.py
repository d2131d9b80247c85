"""notifier: fans exception changes and other services' requests out to channels; in-app feed with a cursor; named credentials."""
