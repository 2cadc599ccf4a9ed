"""Redis: the versioned read cache, per-key locks, the connection with its breaker, and its secrets."""
