"""Any bounded source, read in a child process: its blocks' making no longer takes driver time.

The synthetic generator costs about as much CPU as the pipeline's driver: run in the driver, it
took about a third of the driver's time, so ``make run`` printed ~1.5x less than ``make bench``
measured. In a process of its own it runs beside the driver; the driver only receives finished
blocks, bounded ``depth`` blocks ahead.

A block's bytes travel through a ring of shared-memory slots, not a pipe: measured here, a 4.8 MB
block took 8-10 ms through a ``multiprocessing.Queue`` or ``Pipe`` (pickling and 64 KB pipe
writes, half of it on the driver) and 1.5 ms through shared memory (one copy in, one copy out).
The driver creates and removes the slots; a block larger than a slot, or a ``/dev/shm`` without
room for the ring, falls back to the queue.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing import shared_memory
from typing import Any, Final

from engine.sources.base import Source, SourceBlock
from engine.sources.spawn import child_signals, held_signals

__all__ = ["BackgroundSource"]

_END = "end"
#: Default slot size: a 20K-row synthetic block is ~5 MB. tmpfs allocates pages only as they are
#: written, so a roomy slot costs nothing until a block fills it.
SLOT_BYTES: Final[int] = 16 << 20
#: Where POSIX shared memory lives on Linux (checked for room before the ring is made).
_SHM_DIR: Final[str] = "/dev/shm"


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

    def __init__(self, source: Source, depth: int = 4, slot_bytes: int = SLOT_BYTES) -> None:
        self.inner = source
        self.name = source.name
        self.depth = depth
        self.slot_bytes = slot_bytes
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._items: Any = None
        self._stop: Any = None
        self._free: Any = None
        self._slots: list[shared_memory.SharedMemory] = []

    def start(self) -> None:
        if self._process is not None:
            return
        self._items = self._context.Queue(maxsize=self.depth)
        self._stop = self._context.Event()
        self._free = self._context.Queue()
        self._slots = _ring(self.depth, self.slot_bytes)
        for number in range(len(self._slots)):
            self._free.put(number)
        names = [slot.name for slot in self._slots]
        self._process = self._context.Process(
            target=_produce,
            args=(self.inner, self._items, self._stop, os.getpid(), names, self._free),
            name=f"thermocline-source-{self.name}",
            daemon=True,
        )
        with held_signals():  # Ctrl-C is the driver's to handle (engine.sources.spawn)
            self._process.start()

    def stop(self) -> None:
        super().stop()
        if self._stop is not None:
            self._stop.set()

    @property
    def replay_id(self) -> str | None:
        return self.inner.replay_id

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
            if isinstance(item, tuple):  # (slot, size, the block without its data)
                number, size, block = item
                item = replace(block, data=bytes(_view(self._slots[number])[:size]))
                self._free.put(number)
            if isinstance(item, SourceBlock):
                if self.stopping:
                    return
                yield item
            elif item == _END:
                self._release()  # the child is done with the ring
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
        self._release()

    def _release(self) -> None:
        slots, self._slots = self._slots, []
        for slot in slots:  # the driver made them: it removes them, whatever the child did
            slot.close()
            with contextlib.suppress(FileNotFoundError):
                slot.unlink()


def _ring(depth: int, slot_bytes: int) -> list[shared_memory.SharedMemory]:
    """``depth`` shared-memory slots, or none when ``/dev/shm`` lacks room for all of them
    (tmpfs would kill the writer with SIGBUS when full; a container's is often 64 MB)."""
    try:
        stats = os.statvfs(_SHM_DIR)
    except OSError:
        return []
    if stats.f_bavail * stats.f_frsize < 2 * depth * slot_bytes:  # leave room for others
        return []
    return [shared_memory.SharedMemory(create=True, size=slot_bytes) for _ in range(depth)]


def _produce(
    source: Source, items: Any, stop: Any, parent: int, names: list[str], free: Any
) -> None:
    """The child: put each block, then the end (or the error's text), in ``items``.

    A block's bytes go into a free slot of the ring (``names``; ``free`` hands back the slots the
    driver has copied out), and ``items`` gets ``(slot, size, block without data)``.

    It ends with its parent: a watchdog thread exits the process once the parent is gone (a
    killed driver leaves no generator behind). It ignores SIGINT (Ctrl-C is the driver's to
    handle) and keeps SIGTERM's default, so it can be stopped like any process.
    """
    child_signals(terminate=True)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    slots = [shared_memory.SharedMemory(name=name) for name in names]
    try:
        for block in source.blocks():
            if stop.is_set():
                break
            if block is None:
                continue
            size = len(block.data or b"")
            if not slots or block.data is None or size > slots[0].size:
                items.put(block)
                continue
            number = _take(free, stop)
            if number is None:
                break
            _view(slots[number])[:size] = block.data
            items.put((number, size, replace(block, data=None)))
    except Exception as exc:  # the driver raises it with this text
        items.put(f"{type(exc).__name__}: {exc}")
        return
    finally:
        for slot in slots:
            slot.close()
    items.put(_END)


def _view(slot: shared_memory.SharedMemory) -> memoryview:
    view = slot.buf
    assert view is not None, "a closed slot"  # typeshed: None once closed
    return view


def _take(free: Any, stop: Any) -> int | None:
    """The next slot the driver has copied out, or None once the driver asked to stop."""
    while not stop.is_set():
        try:
            return int(free.get(timeout=0.2))
        except queue.Empty:
            continue
    return None


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
