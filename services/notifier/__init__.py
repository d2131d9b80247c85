"""notifier: fans exception changes out to channels; in-app feed with a cursor."""
