"""The one error type the CLI turns into a single red line and a non-zero exit."""


class ScaffoldError(Exception):
    """A user-facing error: its message is one sentence that says what went wrong and what to do."""
