"""Starting a source's child process without losing the driver's Ctrl-C or SIGTERM.

A child started while SIGINT and SIGTERM are *ignored* inherits "ignored", which keeps a Ctrl-C at
the terminal (sent to the whole process group) from killing it during its imports; but a signal
sent to the driver in that window is lost: a run was seen to finish all its events after a SIGTERM
sent while its generator process started. Here the signals are *blocked* in the starting thread
instead: the child inherits the block (and picks its own dispositions before unblocking them), the
driver gets a signal sent meanwhile through another thread or once the start returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["child_signals", "held_signals"]

_STOPS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread meanwhile (a child started now inherits the block;
    see :func:`child_signals`); a signal that came is delivered when the block ends.

    Example:
        >>> with held_signals():
        ...     pass
        >>> signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        False
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def child_signals(terminate: bool) -> None:
    """In the child: ignore SIGINT (the driver decides when to stop), SIGTERM too unless
    ``terminate`` (then it ends the child, the default), then unblock both."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if terminate else signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
