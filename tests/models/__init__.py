"""Models that exercise scaffold's checks; imported as tests.models.<module>:<attr> from the repository root."""
