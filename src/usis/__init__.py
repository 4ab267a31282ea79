"""usis."""
