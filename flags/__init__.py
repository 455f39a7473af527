"""Feature flags, segments, evaluation and OFREP."""
