"""What `scaffold new`, `update` and `doctor` show while they work, and how long each stage took.

On a terminal: one status line (a rich spinner) that names the current stage. Not on a terminal (CI logs, a
pipe): one plain line per stage, so a log shows where a slow run spent its time. --verbose prints the plain
lines on a terminal too; --quiet prints no progress at all. At the end (unless quiet) one line sums up the
stages and their times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from rich.console import Console
from rich.markup import escape


class Verbosity(StrEnum):
    quiet = "quiet"
    normal = "normal"
    verbose = "verbose"


# Library log lines that tell a scaffold user nothing they can act on, dropped unless --verbose:
# logger name -> fragments of the message.
LIBRARY_NOISE = {
    # torchao (imported by transformers when installed) registers Enums the deprecated way, on every import.
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    # transformers models built from a config without loss_type, when anything reads model.loss_function.
    "transformers.modeling_utils": ("was set in the config but it is unrecognized. Using the default loss",),
}


class _DropNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format itself is not ours to judge
            return True
        return not any(f in message for f in self.fragments)


def quiet_library_noise() -> None:
    """Drop the LIBRARY_NOISE lines (once per process; a filter on the logger itself, so it holds whatever
    handlers the library sets up later)."""
    for name, fragments in LIBRARY_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(fragments))


class Stages:
    """A progress callback (`stages("exporting")` starts a stage) that times what it is told about."""

    def __init__(self, console: Console, verbosity: Verbosity = Verbosity.normal) -> None:
        if verbosity is not Verbosity.verbose:
            quiet_library_noise()
        self.console = console
        self.verbosity = verbosity
        self.done: list[tuple[str, float]] = []
        self.current: str | None = None
        self.started = time.perf_counter()
        self._since = self.started
        self._status = None

    @property
    def plain(self) -> bool:
        """One line per stage instead of a status line."""
        return self.verbosity is Verbosity.verbose or (
            self.verbosity is Verbosity.normal and not self.console.is_terminal)

    def __call__(self, message: str) -> None:
        if message == self.current:  # the caller's first stage, announced again by the work itself
            return
        self._close()
        self.current = message
        if self.verbosity is Verbosity.quiet:
            return
        if self.plain:
            self.console.print(f"[dim]...[/] {escape(message)}", highlight=False, soft_wrap=True)
        elif self._status is not None:
            self._status.update(escape(message))

    def _close(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.done.append((self.current, now - self._since))
        self._since = now
        self.current = None

    @contextmanager
    def running(self, first: str) -> Iterator[Stages]:
        """Show the status line (on a terminal, unless plain or quiet) while the body runs."""
        if self.verbosity is Verbosity.normal and not self.plain:
            with self.console.status(escape(first), spinner="dots") as status:
                self._status = status
                try:
                    self(first)
                    yield self
                finally:
                    self._status = None
                    self._close()
        else:
            try:
                self(first)
                yield self
            finally:
                self._close()

    def summary(self) -> str:
        """`stages: checking 0.1 s, exporting 4.2 s, rendering 0.1 s; total 4.4 s` (the first words of each)."""
        parts = [f"{_short(name)} {seconds:.1f} s" for name, seconds in self.done if seconds >= 0.05]
        return f"stages: {', '.join(parts)}; total {time.perf_counter() - self.started:.1f} s"

    def report(self) -> None:
        if self.verbosity is not Verbosity.quiet and self.done:
            self.console.print(f"[dim]{escape(self.summary())}[/]", highlight=False, soft_wrap=True)


def _short(stage: str) -> str:
    """A stage's name for the summary: its message up to the first parenthesis or colon, at most 48 chars."""
    for stop in (" (", ": "):
        stage = stage.split(stop, 1)[0]
    return stage if len(stage) <= 48 else stage[:47] + "…"
