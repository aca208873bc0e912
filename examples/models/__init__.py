"""Small example models for scaffold: import them as examples.models.<module>:<attr> from the repository root."""
