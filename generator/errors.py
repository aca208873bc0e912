"""The one error type the CLI turns into a single red line and a non-zero exit."""


class ScaffoldError(Exception):
    """A user-facing error: its message is one sentence that says what went wrong and what to do."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (raised by the handlers `scaffold` installs): clean up, print `interrupted`.

    A BaseException, so `except Exception` in scaffold or in user code cannot swallow it, and not a
    KeyboardInterrupt, which typer would turn into a silent exit.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def is_interrupt(e: BaseException) -> bool:
    """Signals stop scaffold; every other exception from user code (SystemExit included) is a failure to report."""
    return isinstance(e, (KeyboardInterrupt, Interrupted))


def user_code_failure(e: BaseException, what: str) -> ScaffoldError:
    """A BaseException that is not a signal (SystemExit from sys.exit, GeneratorExit, ...) escaped user code
    during `what`: one line that says so, instead of scaffold exiting silently with the model's exit code."""
    if isinstance(e, SystemExit):
        code = "" if e.code is None else repr(e.code)
        return ScaffoldError(f"{what} called sys.exit({code}) (SystemExit); scaffold stopped there, no project "
                             "was written: remove the exit from the model's code")
    return ScaffoldError(f"{what} raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                         .rstrip(": "))
