"""How a command stops early: Ctrl-C, SIGTERM and a closed stdout, each an exit code and one line.

Every command runs inside `stops()`: SIGTERM raises `Terminated` (a KeyboardInterrupt, so whatever saves
state on Ctrl-C saves it on SIGTERM too); what escapes the command becomes 130 / 143 / 141. A command
that has more to say (train names the checkpoint to resume from) catches them itself first.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

from ..constants import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_TERMINATED


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: stop, keep what is saved, say so."""


def _terminate(signum, frame):
    raise Terminated


def stopped_code(e: KeyboardInterrupt) -> int:
    """The exit code of a stop: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED


def stopped_name(e: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"


def run_stoppable(command, saved: str = "finished results are saved") -> int:
    """command() -> its exit code, with SIGTERM raising Terminated meanwhile; a stop that escapes it is
    one line on stderr ("interrupted; SAVED") and its exit code."""
    with _sigterm_raises():
        try:
            return command()
        except KeyboardInterrupt as e:
            print(f"{stopped_name(e)}; {saved}", file=sys.stderr)
            return stopped_code(e)
        except BrokenPipeError:
            # The reader of stdout went away (`| head -1`): stop quietly, as command-line tools do. Point
            # stdout at /dev/null so that the interpreter's last flush does not fail a second time.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE


@contextmanager
def _sigterm_raises():
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
