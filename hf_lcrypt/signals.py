"""SIGTERM handled as Ctrl-C: what `docker stop`, systemd and schedulers send before they kill a process.

Inside `stop_on_sigterm()`, SIGTERM raises `Terminated` (a `KeyboardInterrupt`) where the program is, so that the
code that stops cleanly on Ctrl-C (complete outputs only, one line, `--resume`) does the same for it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Raise `Terminated` on SIGTERM inside the block (in the main thread, where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as shells report a process a signal stopped: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)


def describe(interrupt: KeyboardInterrupt) -> str:
    return f"stopped by {interrupt}" if isinstance(interrupt, Terminated) else "interrupted"
