"""usis.metrics."""
