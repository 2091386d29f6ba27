"""Leases in the lake: at most one holder of a named piece of work at a time (one compaction
per table).

A lease is a run of objects ``_leases/{name}/{n}.json`` (``n`` zero-padded), each created with
a put-if-absent (:func:`engine.lake.put_if_absent`: ``If-None-Match: *`` on S3, a hard link in a
folder, as Delta commits are made). The holder of the highest ``n`` holds the lease until its
``expires_ms`` passes or it writes ``{n}.released``. To take the lease, a process reads the
highest ``n``; when that one is released or expired (or there is none) it creates ``n + 1``. Of
processes racing for ``n + 1``, one creates it and the others are told who holds it: a lease is
decided by the store, never by clocks agreeing (only its expiry reads the clock; keep ``ttl``
well above the clock skew between machines, and the work under it shorter than ``ttl``:
:meth:`Lease.remaining` says how long is left).

Example:
    >>> import tempfile
    >>> from engine.lake import Lake
    >>> leases = Leases(Lake(tempfile.mkdtemp()))
    >>> first = leases.acquire("compact/events", ttl_s=60, owner="job-1")
    >>> try:
    ...     leases.acquire("compact/events", ttl_s=60, owner="job-2")
    ... except LeaseHeld as held:
    ...     print(held.holder.split()[-1])  # after the host and process id
    job-1
    >>> leases.release(first)
    >>> leases.acquire("compact/events", ttl_s=60, owner="job-2").number
    2
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Final

from engine.lake import Lake, encode_partition_value, put_if_absent
from routers.errors import ThermoclineError

__all__ = ["LEASES_DIR", "Lease", "LeaseHeld", "Leases"]

LEASES_DIR: Final[str] = "_leases"
_DIGITS: Final[int] = 20


class LeaseHeld(ThermoclineError):
    """Another process holds the lease.

    Attributes:
        holder: the holder's owner string (host, process and a label).
        expires_ms: when its lease runs out unless released (epoch milliseconds).
    """

    retriable = True

    def __init__(self, name: str, holder: str, expires_ms: int) -> None:
        left = max(0.0, (expires_ms - time.time() * 1000) / 1000)
        super().__init__(
            f"lease {name} is held by {holder} for {left:.0f} s more (until it is released or"
            " expires); wait for it, or stop that process"
        )
        self.holder = holder
        self.expires_ms = expires_ms


@dataclass(frozen=True)
class Lease:
    """A lease this process holds."""

    name: str
    number: int
    owner: str
    expires_ms: int

    def remaining(self) -> float:
        """Seconds until the lease runs out (negative: it has)."""
        return (self.expires_ms - time.time() * 1000) / 1000


class Leases:
    """The leases of a lake (``_leases/``)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    def _folder(self, name: str) -> str:
        # One folder per name, however many slashes it has (``compact/warm/kpis``).
        return self.lake.path(LEASES_DIR, encode_partition_value(name))

    def _latest(self, name: str) -> tuple[int, dict[str, object] | None, bool]:
        """(highest n, its record, whether it was released); (0, None, True) for none."""
        folder = self._folder(name)
        try:
            self.lake.fs.invalidate_cache(folder)
            names = [p.rsplit("/", 1)[-1] for p in self.lake.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return 0, None, True
        numbers = [int(n[:_DIGITS]) for n in names if n.endswith(".json") and n[:_DIGITS].isdigit()]
        if not numbers:
            return 0, None, True
        latest = max(numbers)
        try:
            with self.lake.fs.open(f"{folder}/{latest:0{_DIGITS}d}.json", "rb") as handle:
                record = json.loads(handle.read())
        except FileNotFoundError:
            return self._latest(name)  # a newer holder removed it since we listed: read again
        return latest, record, f"{latest:0{_DIGITS}d}.released" in names

    def acquire(self, name: str, ttl_s: float, owner: str = "") -> Lease:
        """Take the lease ``name`` for ``ttl_s`` seconds.

        Raises:
            LeaseHeld: another process holds it (not released, not expired), or took it
                between our read and our write.
        """
        owner = f"{socket.gethostname()}:{os.getpid()}" + (f" {owner}" if owner else "")
        latest, record, released = self._latest(name)
        now_ms = int(time.time() * 1000)
        if record is not None and not released and int(str(record["expires_ms"])) > now_ms:
            raise LeaseHeld(name, str(record["owner"]), int(str(record["expires_ms"])))
        lease = Lease(name, latest + 1, owner, now_ms + int(ttl_s * 1000))
        folder = self._folder(name)
        self.lake.fs.makedirs(folder, exist_ok=True)
        data = json.dumps({"owner": owner, "expires_ms": lease.expires_ms}).encode()
        created = put_if_absent(self.lake.fs, f"{folder}/{lease.number:0{_DIGITS}d}.json", data)
        # Created, yet someone may have gone past it meanwhile: had we stalled between reading
        # and writing, a later holder could have removed that number's record (_forget_before)
        # and our put-if-absent of it succeed. A record is removed only once a higher one
        # exists, so a higher number now means we do not hold the lease.
        latest, winner, _ = self._latest(name)
        if not created or latest != lease.number:
            holder = "another process" if winner is None else str(winner["owner"])
            expires = now_ms if winner is None else int(str(winner["expires_ms"]))
            raise LeaseHeld(name, holder, expires)
        self._forget_before(name, lease.number)
        return lease

    def release(self, lease: Lease) -> None:
        """Give the lease up (the next :meth:`acquire` takes it at once)."""
        path = f"{self._folder(lease.name)}/{lease.number:0{_DIGITS}d}.released"
        with self.lake.fs.open(path, "wb") as handle:
            handle.write(b"{}")

    def _forget_before(self, name: str, number: int) -> None:
        """Delete the records of earlier holders (best effort: they decide nothing now)."""
        folder = self._folder(name)
        with contextlib.suppress(OSError):
            for path in self.lake.fs.ls(folder, detail=False):
                stem = path.rsplit("/", 1)[-1][:_DIGITS]
                if stem.isdigit() and int(stem) < number:
                    self.lake.fs.rm(path)
