"""Training: the USIS step (G, S, D + decoder), EMA, checkpoints, monitoring."""
