"""Any bounded source, read in a child process: its blocks' making no longer takes driver time.

The synthetic generator makes ~430K events/s on one core, close to the pipeline's own rate: run in
the driver, it took about a third of the driver's time, so ``make run`` printed ~1.5x less than
``make bench`` measured. In a process of its own it runs beside the driver; the driver only
receives finished blocks (a pipe copy of their bytes) from a bounded queue.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from engine.sources.base import Source, SourceBlock

__all__ = ["BackgroundSource"]

_END = "end"


class BackgroundSource(Source):
    """Read ``source`` (bounded: synthetic, file) in a child process, ``depth`` blocks ahead.

    The child is spawned (not forked: the driver runs Ray's threads) when the pipeline starts,
    so it starts beside the paths' deployment. ``stop()`` reaches it; an error in it is raised
    again here with its message; it never outlives the driver (a daemon).

    Example:
        >>> from engine.sources import SyntheticSource
        >>> inner = SyntheticSource(events=5, block_rows=2, start_ms=0, malformed_share=0)
        >>> [b.events for b in BackgroundSource(inner).blocks()]
        [2, 2, 1]
    """

    def __init__(self, source: Source, depth: int = 4) -> None:
        self.inner = source
        self.name = source.name
        self.depth = depth
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._items: Any = None
        self._stop: Any = None

    def start(self) -> None:
        if self._process is not None:
            return
        self._items = self._context.Queue(maxsize=self.depth)
        self._stop = self._context.Event()
        self._process = self._context.Process(
            target=_produce,
            args=(self.inner, self._items, self._stop, os.getpid()),
            name=f"thermocline-source-{self.name}",
            daemon=True,
        )
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:  # the child inherits "ignore": Ctrl-C is the driver's to handle
            self._process.start()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self) -> None:
        super().stop()
        if self._stop is not None:
            self._stop.set()

    def blocks(self) -> Iterator[SourceBlock | None]:
        self.start()
        while True:
            try:
                item = self._items.get(timeout=0.2)
            except queue.Empty:
                if self.stopping:  # the child may be waiting for its next block's time
                    return
                if not self._process.is_alive():
                    raise RuntimeError(
                        f"the {self.name} source process exited unexpectedly"
                        f" (exit code {self._process.exitcode})"
                    ) from None
                continue
            if isinstance(item, SourceBlock):
                if self.stopping:
                    return
                yield item
            elif item == _END:
                return
            else:  # the child's error, as text (any exception pickles as its message)
                raise RuntimeError(f"the {self.name} source failed: {item}")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._stop.set()
        deadline = time.monotonic() + 2
        while process.is_alive() and time.monotonic() < deadline:
            try:  # unblock a child waiting to put into a full queue
                self._items.get(timeout=0.1)
            except queue.Empty:
                process.join(timeout=0.1)
        if process.is_alive():  # asleep until its next block is due: nothing to finish
            process.kill()
        process.join()


def _produce(source: Source, items: Any, stop: Any, parent: int) -> None:
    """The child: put each block, then the end (or the error's text), in ``items``.

    It ends with its parent: a watchdog thread exits the process once the parent is gone (a
    killed driver leaves no generator behind). SIGTERM is restored to its default (the start
    ignored it, for the driver to handle Ctrl-C), so the child can be stopped like any process.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    try:
        for block in source.blocks():
            if stop.is_set():
                break
            if block is not None:
                items.put(block)
    except Exception as exc:  # the driver raises it with this text
        items.put(f"{type(exc).__name__}: {exc}")
        return
    items.put(_END)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
