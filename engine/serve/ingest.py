"""Decoding and routing of request bodies, several requests at a time.

``pyarrow.json`` costs a fixed ~0.2-0.5 ms a call whatever the size, more than the 100 events of
a typical client batch take to parse. So requests are decoded in groups: while one group is
decoded (on a worker thread: Arrow releases the GIL), the requests arriving meanwhile gather
into the next. An idle service decodes a lone request at once; a busy one makes fewer, larger
calls. Each request gets back its own share: its events per temperature and its dead letters.

The decoder is the router's (:func:`routers.decode.decode_ndjson`), with the same dead-letter
rules as the pipeline. One stream's :class:`~routers.decode.DecodeHints` serve all requests; the
schema contract is the group's own, so undeclared columns are unified within a group only (the
pipeline unifies again over its blocks; declare a column in the policy's ``schema.columns`` to
have it checked here the same way every time).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from routers import TEMPERATURES, DecodeHints, Router, decode_ndjson
from routers.records import join_records

__all__ = ["GroupDecoder", "Routed"]


@dataclass
class Routed:
    """One request's events after decoding and routing.

    Attributes:
        good: per temperature, ``(event index in the request, key)`` of its events, in order.
        dead: ``(event index, exact bytes, reason)`` of each dead letter.
    """

    good: dict[str, list[tuple[int, str | None]]] = field(
        default_factory=lambda: {t: [] for t in TEMPERATURES}
    )
    dead: list[tuple[int, bytes, str]] = field(default_factory=list)

    def counts(self) -> dict[str, object]:
        """What the response reports: events per temperature, dead letters by reason."""
        reasons = Counter(reason for _, _, reason in self.dead)
        accepted = sum(len(rows) for rows in self.good.values())
        return {
            "accepted": accepted,
            **{t: len(rows) for t, rows in self.good.items()},
            "dead": len(self.dead),
            "dead_reasons": dict(sorted(reasons.items())),
        }


@dataclass
class _Request:
    records: Sequence[bytes]
    receive_ms: int
    future: asyncio.Future[Routed]


class GroupDecoder:
    """Decode and route requests' events in groups of up to ``max_events``.

    Args:
        router: the policy's router (used by one thread at a time, as it must be).
        max_events: events decoded together at most (a request is never split).
    """

    def __init__(self, router: Router, max_events: int) -> None:
        self.router = router
        self.max_events = max_events
        self._hints = DecodeHints()
        self._queue: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # decode calls made, for metrics

    async def route(self, records: Sequence[bytes], receive_ms: int) -> Routed:
        """Decode and route one request's events (``receive_ms``: its arrival time)."""
        if not records:
            return Routed()
        future: asyncio.Future[Routed] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(records, receive_ms, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            group: list[_Request] = []
            size = 0
            while self._queue and (
                not group or size + len(self._queue[0].records) <= self.max_events
            ):
                request = self._queue.pop(0)
                group.append(request)
                size += len(request.records)
            try:
                results = await asyncio.to_thread(self._route_group, group)
            except Exception:
                # Data should never raise here (it becomes dead letters), but should one
                # request's events hit a bug, the others of its group must not share its fate:
                # each is decoded again on its own.
                for request in group:
                    try:
                        routed = (await asyncio.to_thread(self._route_group, [request]))[0]
                    except Exception as exc:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    else:
                        if not request.future.done():
                            request.future.set_result(routed)
                continue
            for request, routed in zip(group, results, strict=True):
                if not request.future.done():
                    request.future.set_result(routed)

    def _route_group(self, group: list[_Request]) -> list[Routed]:
        self.groups += 1
        sizes = np.array([len(r.records) for r in group], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        records = [record for request in group for record in request.records]
        data, raw_lines = join_records(records)
        schema = self.router.policy.schema
        decoded = decode_ndjson(data, schema, hints=self._hints, raw_lines=raw_lines)
        results = [Routed() for _ in group]

        dead = decoded.dead
        if dead.num_rows:
            dead_lines = dead.column("line").to_numpy()
            owners = np.searchsorted(starts, dead_lines, side="right") - 1
            for owner, line, raw, reason in zip(
                owners.tolist(), dead_lines.tolist(), dead.column("raw").to_pylist(),
                dead.column("reason").to_pylist(), strict=True,
            ):  # fmt: skip
                results[owner].dead.append((line - int(starts[owner]), raw, reason))

        good = decoded.good
        if good.num_rows:
            lines = decoded.good_lines
            owners = np.searchsorted(starts, lines, side="right") - 1
            receive = np.array([r.receive_ms for r in group], dtype=np.int64)[owners]
            arrival = pa.array(receive).cast(pa.timestamp("ms", "UTC"))
            if schema.arrival in good.schema.names:  # the client sent its own: ours counts
                good = good.drop_columns([schema.arrival])
            good = good.append_column(schema.arrival, arrival)
            codes = self.router.classify(good).indices
            keys = good.column(schema.key).to_pylist()
            local = (lines - starts[owners]).tolist()
            for owner, index, key, code in zip(
                owners.tolist(), local, keys, codes.to_numpy(zero_copy_only=False).tolist(),
                strict=True,
            ):  # fmt: skip
                results[owner].good[TEMPERATURES[code]].append((index, key))
        return results
