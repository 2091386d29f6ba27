"""Seeded synthetic game telemetry, generated as NDJSON blocks with Arrow string kernels.

Events: session_start, level_up, purchase, match_end, social, refund, with player id, event time,
tier, region, level, quality and engagement scores. A share arrives late (seconds to minutes) or
stale (hours, so age rules matter), and a share is malformed (so dead letters appear). The same
seed and start time always give the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.sources.base import Source, SourceBlock

__all__ = ["EVENT_MIX", "SyntheticSource"]

#: Event types and their shares.
EVENT_MIX: Final[dict[str, float]] = {
    "session_start": 0.08,
    "level_up": 0.22,
    "purchase": 0.05,
    "match_end": 0.30,
    "social": 0.33,
    "refund": 0.02,
}
_TIERS = np.array(["free", "gold", "vip"])
_TIER_P = [0.80, 0.15, 0.05]
_REGIONS = np.array(["eu-1", "us-1", "ap-1", "test-1"])
_REGION_P = [0.4, 0.4, 0.18, 0.02]
#: Event time advances this much per event (nominal 50K events/s of game time).
_NOMINAL_STEP_MS: Final[float] = 0.02
_MALFORMED = ["truncated", "not_json", "no_player", "bad_time"]


class SyntheticSource(Source):
    """Generate ``events`` game events in blocks of ``block_rows``.

    Args:
        events: how many events in all.
        players: distinct player ids (``p0`` .. ``p{players-1}``).
        seed: the random seed; with ``start_ms`` it fixes every byte.
        start_ms: event time of the first event (epoch ms); default: now.
        rate: emitted events per wall-clock second (None: as fast as consumed).
        block_rows: events per block.
        partitions: blocks are dealt round-robin to this many partitions (``"0"``, ``"1"``, ...).
        late_share, stale_share, malformed_share: shares of such events.
        iso_time_share: share of events whose time is an ISO-8601 string instead of epoch
            milliseconds (a block mixing both is read by the decoder as two groups).
        event_mix: event types and relative weights (default :data:`EVENT_MIX`).

    Example:
        >>> src = SyntheticSource(events=5, block_rows=3, start_ms=0, malformed_share=0)
        >>> [(b.partition, b.first_offset, b.last_offset) for b in src.blocks()]
        [('0', 0, 2), ('0', 3, 4)]
    """

    name = "synthetic"

    def __init__(
        self,
        events: int,
        players: int = 100_000,
        seed: int = 42,
        start_ms: int | None = None,
        rate: float | None = None,
        block_rows: int = 20_000,
        partitions: int = 1,
        late_share: float = 0.05,
        stale_share: float = 0.02,
        malformed_share: float = 0.001,
        iso_time_share: float = 0.0,
        event_mix: dict[str, float] | None = None,
    ) -> None:
        self.events = events
        self.players = players
        self.seed = seed
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self.rate = rate
        self.block_rows = block_rows
        self.partitions = partitions
        self.late_share = late_share
        self.stale_share = stale_share
        self.malformed_share = malformed_share
        self.iso_time_share = iso_time_share
        mix = event_mix or EVENT_MIX
        total = sum(mix.values())
        self._kinds = np.array(list(mix))
        self._kind_p = np.array([w / total for w in mix.values()])
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def blocks(self) -> Iterator[SourceBlock | None]:
        next_offset = [0] * self.partitions
        started = time.monotonic()
        for number, first in enumerate(range(0, self.events, self.block_rows)):
            if self._stopping:
                return
            rows = min(self.block_rows, self.events - first)
            if self.rate:  # pace emission: block k is due at k * rows / rate seconds
                delay = started + (first + rows) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            partition = number % self.partitions
            offset = next_offset[partition]
            next_offset[partition] += rows
            yield SourceBlock(
                partition=str(partition),
                first_offset=offset,
                last_offset=offset + rows - 1,
                data=self.block_bytes(first, rows),
            )

    def block_bytes(self, first: int, rows: int) -> bytes:
        """NDJSON of events ``first`` .. ``first + rows - 1`` (deterministic per seed and index)."""
        rng = np.random.default_rng([self.seed, first])
        seq = np.arange(first, first + rows)
        event_type = self._kinds[rng.choice(len(self._kinds), rows, p=self._kind_p)]
        nominal = self.start_ms + (seq * _NOMINAL_STEP_MS).astype(np.int64)
        roll = rng.random(rows)
        late = rng.integers(5_000, 600_000, rows)  # 5 s to 10 min
        stale = rng.integers(3_600_001, 48 * 3_600_000, rows)  # past 1 h, up to 2 days
        shift = np.where(roll < self.stale_share, stale, 0)
        shift = np.where(
            (roll >= self.stale_share) & (roll < self.stale_share + self.late_share), late, shift
        )
        event_ms = nominal - shift

        ms = pa.array(event_ms, pa.int64())
        iso = rng.random(rows) < self.iso_time_share
        iso_text = pc.strftime(ms.cast(pa.timestamp("ms", "UTC")), format="%Y-%m-%dT%H:%M:%SZ")
        time_text = pc.if_else(
            pa.array(iso),
            pc.binary_join_element_wise('"', iso_text, '"', ""),
            ms.cast(pa.string()),
        )
        text = pa.string()
        line = pc.binary_join_element_wise(
            '{"event_id":"e', pa.array(seq).cast(text),
            '","player_id":"p', pa.array(rng.integers(0, self.players, rows)).cast(text),
            '","event_time":', time_text,
            ',"event_type":"', pa.array(event_type),
            '","tier":"', pa.array(_TIERS[rng.choice(3, rows, p=_TIER_P)]),
            '","region":"', pa.array(_REGIONS[rng.choice(4, rows, p=_REGION_P)]),
            '","level":', pa.array(rng.integers(1, 101, rows)).cast(text),
            ',"quality_score":', pa.array(rng.random(rows).round(4)).cast(text),
            ',"engagement_score":', pa.array(rng.beta(2, 5, rows).round(4)).cast(text),
            "}\n",
            "",
        )  # fmt: skip
        bad = rng.random(rows) < self.malformed_share
        if bad.any():
            line = self._spoil(line, bad, rng)
        offsets = np.frombuffer(line.buffers()[1], dtype=np.int32, count=rows + 1)
        return line.buffers()[2].to_pybytes()[offsets[0] : offsets[rows]]

    @staticmethod
    def _spoil(line: pa.Array, bad: np.ndarray, rng: np.random.Generator) -> pa.Array:
        """Replace the ``bad`` lines with one of four kinds of malformed event."""
        kind = np.array(_MALFORMED)[rng.integers(0, len(_MALFORMED), len(bad))]
        truncated = pc.binary_join_element_wise(pc.utf8_slice_codeunits(line, 0, 40), "\n", "")
        no_player = pc.replace_substring_regex(line, r'"player_id":"p\d+",', "")
        bad_time = pc.replace_substring_regex(
            line, r'"event_time":("[^"]*"|\d+)', '"event_time":"soon"'
        )
        spoiled = pc.case_when(
            pc.make_struct(
                pa.array(kind == "truncated"), pa.array(kind == "not_json"),
                pa.array(kind == "no_player"), field_names=["a", "b", "c"],
            ),
            truncated, pa.scalar("this is not json\n"), no_player, bad_time,
        )  # fmt: skip
        return pc.if_else(pa.array(bad), spoiled, line)
