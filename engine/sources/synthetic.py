"""Seeded synthetic game telemetry: heterogeneous NDJSON, built with Arrow string kernels.

The events look like what game clients (a Unity SDK, a web SDK) really send, not like one table:

============== ===================================================================
event type     fields beyond the common ones (always present on that type)
============== ===================================================================
session_start  ``session_id`` (16 hex digits), ``platform``, ``app_version``
session_end    ``session_id``, ``platform``, ``app_version``, ``session_length_s`` (int or float)
level_up       ``level`` (int 1..100)
purchase       ``amount`` (int or float), ``currency`` (USD/EUR/GBP/BRL/JPY), ``item``
match_end      ``duration`` (seconds, int or float), ``result`` (win/loss/draw), ``kills`` (int)
social         ``partner_id`` (a player id, same kinds as ``player_id``), ``action``
               (invite/chat/gift)
refund         ``amount``, ``currency``
============== ===================================================================

Every event has ``event_id`` (``"e<seq>"``), ``player_id``, ``event_time`` and ``event_type``; the
common fields ``tier``, ``region``, ``platform``, ``app_version``, ``quality_score`` and
``engagement_score`` are each missing from a share ``missing_share`` of events (except
``platform`` and ``app_version`` on session events, which always have them). An event type
outside :data:`EVENT_MIX` (from a custom ``event_mix``) gets the common fields only.

- **Ids**: a share ``numeric_id_share`` of players (chosen by a hash of the player index and the
  seed, so a player keeps its kind) has a JSON-integer ``player_id``: a 64-bit account id, half of
  them from a legacy range (``7340000000000000 + i``) and half above 2**53 (``9100000000000001 +
  2*i``, odd, so a float64 cannot hold them). Other players are ``"p<i>"``. ``partner_id`` follows
  the partner's kind.
- **Numbers**: measures (``amount``, ``duration``, ``session_length_s``) are whole numbers (JSON
  ints) on about half of the events and decimals on the rest, so a column mixes ints and floats;
  JPY amounts are whole yen.
- **Field order**: a player's platform fixes its SDK: ios/android/switch (Unity) send the event
  type and payload first and ``event_id`` late; pc/web send ``event_id``, ids and time first.
- **Times**: epoch milliseconds; a share ``iso_time_share`` sends an ISO-8601 string (UTC,
  milliseconds), a share ``epoch_seconds_share`` epoch seconds (a decimal, or an int on a whole
  second). Shares ``late_share`` and ``stale_share`` are late (5 s to 10 min) or stale (1 h to 2
  days) against their arrival time.
- **Malformed**: a share ``malformed_share`` of lines is truncated, not JSON, lacks ``player_id``
  or has an unusable time, so dead letters appear.
- **Drift** (``drift`` = d in 0..1, default 0): from event ``events // 2`` on (mid-stream), a share
  d of events comes from a new client release. Such an event has ``app_version`` ``"2.0.0"`` (when
  the field is present), always carries two new fields, ``ab_bucket`` (``"A"``, ``"B"`` or
  ``"control"``) and a nested ``device`` object (``{"model": ..., "os": ..., "installed_at":
  ..., "cohort_day": ...}``, matching the platform; ``installed_at`` is an ISO-8601 time as that
  SDK writes it: Unity's seven fraction digits, JavaScript's milliseconds, or a zone-less local
  time; ``cohort_day`` its date, ``"2025-09-14"``: text Arrow's JSON reader would take for a
  timestamp), and sends numbers as strings: ``level`` as ``"12"`` (``"max"`` for levels 95..100) and
  ``amount`` as ``"4.99"``. Before mid-stream, and with d = 0, no event has them. All other bytes
  are the same whatever d is (the drift draw is made either way).

Arrival: block meta :data:`~engine.sources.base.ARRIVAL_COLUMN` holds each event's arrival time
(``timestamp[ms, UTC]``); event time is arrival minus the late/stale shift, so it is never later
than the arrival. Without ``rate``, event i arrives at ``start_ms + i * 0.02`` ms (50K events per
second of game time) and the same arguments always give the same bytes: each block comes from a
generator seeded with (seed, index of its first event), so a block can be rendered on its own.
With ``rate``, event i arrives at ``t0 + i * 1000 / rate`` ms, where t0 is the wall clock when
:meth:`blocks` started (``start_ms`` is not used), and each event's scheduled wall time is also
when it was due (``SourceBlock.due_ms``), for latency.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterator, Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.sources.base import ARRIVAL_COLUMN, Source, SourceBlock

__all__ = ["EVENT_MIX", "SyntheticSource"]

#: Event types and their shares.
EVENT_MIX: Final[dict[str, float]] = {
    "session_start": 0.07,
    "session_end": 0.06,
    "level_up": 0.20,
    "purchase": 0.05,
    "match_end": 0.28,
    "social": 0.32,
    "refund": 0.02,
}
_TIERS: Final = ("free", "gold", "vip")
_TIER_P: Final = (0.80, 0.15, 0.05)
_REGIONS: Final = ("eu-1", "us-1", "ap-1", "test-1")
_REGION_P: Final = (0.4, 0.4, 0.18, 0.02)
_PLATFORMS: Final = ("ios", "android", "pc", "web", "switch")
_PLATFORM_P: Final = (0.36, 0.34, 0.15, 0.10, 0.05)
#: Platforms whose client is the Unity SDK (type and payload first); the others send ids first.
_UNITY: Final = np.array([True, True, False, False, True])
#: Two (model, os) per platform, in :data:`_PLATFORMS` order (the drifted ``device`` object).
_DEVICES: Final = (
    ("iPhone15,2", "iOS 17.4"), ("iPhone13,4", "iOS 16.7"),
    ("Pixel 8", "Android 14"), ("SM-S918B", "Android 13"),
    ("Desktop", "Windows 11"), ("Desktop", "Windows 10"),
    ("Chrome 124", "macOS 14"), ("Firefox 125", "Windows 11"),
    ("HAC-001", "Horizon 18"), ("HEG-001", "Horizon 18"),
)  # fmt: skip
#: When each of those devices installed the game, as its SDK writes a time (Unity's "o" format,
#: JavaScript's toISOString, a console's zone-less local time): text that looks like a time.
_INSTALLED: Final = (
    "2025-09-14T08:03:11.5230000Z", "2025-07-02T19:45:00.0000000Z",
    "2025-10-30T12:00:07.1000000Z", "2025-08-21T06:30:59.9990000Z",
    "2025-05-05T21:14:33.000Z", "2025-11-11T11:11:11.111Z",
    "2025-06-18T17:20:45.250Z", "2025-03-09T02:00:00.000Z",
    "2025-12-24 18:00:00", "2025-04-01 07:30:00",
)  # fmt: skip
_APP_VERSIONS: Final = ("1.3.0", "1.4.2", "1.5.0", "2.0.0")
_APP_VERSION_P: Final = (0.1, 0.3, 0.6)  # "2.0.0" is only the drifted release
_DRIFT_VERSION: Final = 3
_AB_BUCKETS: Final = ("A", "B", "control")
_CURRENCIES: Final = ("USD", "EUR", "GBP", "BRL", "JPY")
_CURRENCY_P: Final = (0.45, 0.30, 0.10, 0.10, 0.05)
_JPY: Final = 4
#: Yen per price unit: JPY amounts are whole yen.
_YEN: Final = 150
_PRICES: Final = np.array([0.99, 1.99, 4.99, 9.99, 19.99, 49.99, 99.99])
_PRICE_P: Final = (0.30, 0.25, 0.20, 0.12, 0.08, 0.04, 0.01)
_ITEMS: Final = ("gem_pack_s", "gem_pack_l", "battle_pass", "skin_dragon", "starter_bundle")
_RESULTS: Final = ("win", "loss", "draw")
_RESULT_P: Final = (0.48, 0.48, 0.04)
#: Matches last at least a minute, four on average (exponential beyond the minimum).
_MATCH_MIN_S: Final = 60.0
_MATCH_MEAN_S: Final = 240.0
#: Kills per match: Poisson(4) up to 30, drawn by table lookup (numpy's Poisson is 15x slower).
_KILLS_P: Final = tuple(math.exp(-4) * 4**k / math.factorial(k) for k in range(31))
_ACTIONS: Final = ("invite", "chat", "gift")
_ACTION_P: Final = (0.2, 0.6, 0.2)
#: Share of measures sent as whole numbers (clients that round), so columns mix ints and floats.
_WHOLE_SHARE: Final = 0.5
#: Drifted clients send levels from this one on as "max".
_MAX_LEVEL: Final = 95
#: Numeric account ids: a legacy range below 2**53, and odd ids above it (not float64-exact).
_ACCOUNT_LOW: Final = 7_340_000_000_000_000
_ACCOUNT_HIGH: Final = 9_100_000_000_000_001
#: A session id is one per player per 30 minutes of arrival time, so ends can match starts.
_SESSION_MS: Final = 1_800_000
#: Event time advances this much per event (nominal 50K events/s of game time).
_NOMINAL_STEP_MS: Final[float] = 0.02
_MALFORMED: Final = ("truncated", "not_json", "no_player", "bad_time")
_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_TEXT: Final = pa.string()
#: Entries of a category lookup table (see :func:`_pick`).
_PICK_RESOLUTION: Final = 1 << 16
#: The four decimal digits of 0 .. 9999, each as the 4 bytes of one uint32 (for scores): one
#: 4-byte gather per score instead of four 1-byte ones.
_DIGITS4: Final = np.frombuffer(b"".join(b"%04d" % i for i in range(10_000)), dtype=np.uint32)
#: Players up to this many get their id fragments formatted once, then looked up (a table costs
#: about 30 bytes a player; beyond this, ids are formatted per block, ~5% slower).
_ID_TABLE_PLAYERS: Final = 250_000

#: Context fields (each may be missing), folded into one fragment per event: one ``take`` from a
#: table of every combination instead of four, and one argument of the line join instead of four.
_CONTEXT: Final = (
    ("tier", _TIERS),
    ("region", _REGIONS),
    ("platform", _PLATFORMS),
    ("app_version", _APP_VERSIONS),
)
#: Field orders, by SDK: fragments of one or more fields ("context": see :data:`_CONTEXT`,
#: "payload": the event type's own fields, "drift": the drifted release's new fields). An order
#: starts with a field every event has; the Unity order lists the context fields in reverse.
_ORDER_IDS_FIRST: Final = (
    "event_id", "player_id", "event_time", "event_type", "context", "quality_score",
    "engagement_score", "payload", "drift",
)  # fmt: skip
_ORDER_UNITY: Final = (
    "event_type", "event_time", "payload", "player_id", "event_id", "drift", "context",
    "engagement_score", "quality_score",
)  # fmt: skip
assert sorted(_ORDER_IDS_FIRST) == sorted(_ORDER_UNITY)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a stable, well-mixed 64-bit hash of each value (wraps mod 2**64)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from 64-bit hashes."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _cdf(p: Sequence[float]) -> np.ndarray:
    c = np.cumsum(np.asarray(p, dtype=np.float64))
    return c / c[-1]


@functools.lru_cache(maxsize=64)
def _pick_table(p: tuple[float, ...]) -> np.ndarray:
    cdf = _cdf(p)
    middles = (np.arange(_PICK_RESOLUTION) + 0.5) / _PICK_RESOLUTION
    index = np.minimum(np.searchsorted(cdf, middles, side="right"), len(cdf) - 1)
    return index.astype(np.uint8 if len(cdf) <= 256 else np.int64)  # small: stays in cache


def _pick(u: np.ndarray, p: Sequence[float]) -> np.ndarray:
    """Category index of each uniform draw ``u``, for category weights ``p`` (honored to
    1/65536: a table lookup, five times faster than a binary search per draw)."""
    return _pick_table(tuple(p))[(u * _PICK_RESOLUTION).astype(np.intp)]


def _text(values: np.ndarray) -> pa.Array:
    return pa.array(values).cast(_TEXT)


def _fixed(chars: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A string array from a (rows, width) matrix of ASCII bytes, null where not ``valid``."""
    rows, width = chars.shape
    offsets = np.arange(0, width * (rows + 1), width, dtype=np.int32)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        _TEXT, rows, [bitmap, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())]
    )


def _with_prefix(prefix: str, chars: np.ndarray, suffix: str = "") -> np.ndarray:
    """``prefix + row + suffix`` for each row of a (rows, width) byte matrix."""
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    tail = np.frombuffer(suffix.encode(), dtype=np.uint8)
    out = np.empty((len(chars), len(head) + chars.shape[1] + len(tail)), dtype=np.uint8)
    out[:, : len(head)] = head
    out[:, len(head) : len(head) + chars.shape[1]] = chars
    out[:, len(head) + chars.shape[1] :] = tail
    return out


def _score(key: str, unit: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Fragments ``,"key":0.dddd`` for scores in [0, 1) (four decimals), null where not valid.

    Built as fixed-width bytes with numpy: Arrow's float-to-string cast is about 5x slower.
    """
    index = np.minimum((unit * 10_000).astype(np.intp), 9_999)
    digits = _DIGITS4[index].view(np.uint8).reshape(len(index), 4)
    return _fixed(_with_prefix(f',"{key}":0.', digits), valid)


def _hex16(h: np.ndarray) -> np.ndarray:
    """Each 64-bit value as 16 lower-case hex digits, a (rows, 16) byte matrix."""
    raw = h.astype(">u8").view(np.uint8).reshape(-1, 8)
    return _HEX[np.stack([raw >> 4, raw & 15], axis=-1)].reshape(-1, 16)


def _merge(rows: int, parts: Sequence[tuple[np.ndarray, pa.Array]]) -> pa.Array:
    """One string per row: each part's values laid out over the True rows of its mask, in order
    (masks are disjoint); null on rows no mask covers. One concatenation and one take."""
    if len(parts) == 1 and parts[0][0].all():
        return parts[0][1]
    index = np.zeros(rows, dtype=np.int64)
    covered = np.zeros(rows, dtype=bool)
    start = 0
    for mask, values in parts:
        index[mask] = np.arange(start, start + len(values))
        covered |= mask
        start += len(values)
    return pc.take(pa.concat_arrays([v for _, v in parts]), pa.array(index, mask=~covered))


def _choice(key: str, values: Sequence[str], index: np.ndarray) -> pa.Array:
    """Fragments ``,"key":"<values[index]>"``."""
    return pc.take(pa.array([f',"{key}":"{v}"' for v in values], _TEXT), index)


def _measure(values: np.ndarray, whole: np.ndarray, decimals: int) -> pa.Array:
    """Numbers as JSON text: rounded to whole numbers where ``whole`` (printed as ints)."""
    rounded = np.where(whole, np.round(values), np.round(values, decimals))
    return pa.array(rounded, pa.float64()).cast(_TEXT)


#: Amount texts at ``4 * price index + 2 * yen + whole`` (yen amounts are always whole).
_AMOUNT_TEXT: Final = _measure(
    np.repeat(_PRICES, 4) * np.tile([1, 1, _YEN, _YEN], len(_PRICES)),
    np.tile([False, True, True, True], len(_PRICES)),
    2,
)
#: "0" .. "100": levels and kills, looked up instead of formatted.
_SMALL_INT_TEXT: Final = _text(np.arange(101))


def _quoted(text: pa.Array, where: np.ndarray) -> pa.Array:
    """``text`` with the entries where ``where`` in double quotes (a number sent as a string)."""
    if not where.any():
        return text
    return pc.if_else(pa.array(where), pc.binary_join_element_wise('"', text, '"', ""), text)


def _sliced(
    fragment: pa.Array | tuple[str | pa.Array, ...], start: int, stop: int
) -> pa.Array | tuple[str | pa.Array, ...]:
    """Rows ``start`` .. ``stop - 1`` of a fragment (see :func:`_line`)."""
    if isinstance(fragment, tuple):
        return tuple(p if isinstance(p, str) else p.slice(start, stop - start) for p in fragment)
    return fragment.slice(start, stop - start)


def _context_table(reverse: bool) -> pa.Array:
    """Every combination of the context fields as one fragment each, at the mixed-radix code of
    its value indices (each field has one more value: missing), fields in :data:`_CONTEXT` order
    or reversed."""
    options = [[f',"{key}":"{v}"' for v in values] + [""] for key, values in _CONTEXT]
    combos = itertools.product(*options)
    return pa.array(["".join(c[::-1] if reverse else c) for c in combos], _TEXT)


def _line(
    order: Sequence[str],
    opener: Sequence[str | pa.Array],
    fragments: dict[str, pa.Array | tuple[str | pa.Array, ...]],
) -> pa.Array:
    """One JSON object per row: ``opener`` (the first field of ``order``, opening the object),
    then the other fragments of ``order`` (each ``,"key":value...``; null: left out). A fragment
    may also be given as its parts (text and arrays, never null): joined here, in the one pass
    over the line, rather than in a pass of its own."""
    args = list(opener)
    for name in order[1:]:
        fragment = fragments[name]
        if isinstance(fragment, tuple):
            args += fragment
        elif fragment.null_count < len(fragment):
            args.append(fragment)
    return pc.binary_join_element_wise(
        *args, "}\n", "", null_handling="replace", null_replacement=""
    )


class SyntheticSource(Source):
    """Generate ``events`` game events in blocks of ``block_rows`` (see the module docstring).

    Args:
        events: how many events in all.
        players: distinct players (index 0 .. ``players - 1``).
        seed: the random seed; with ``start_ms`` (and ``events``, when ``drift`` > 0) it fixes
            every byte when ``rate`` is None.
        start_ms: arrival time of the first event (epoch ms); default: now. Unused with ``rate``.
        rate: emitted events per wall-clock second (None: as fast as consumed); arrival times then
            follow the wall clock.
        block_rows: events per block.
        partitions: blocks are dealt round-robin to this many partitions (``"0"``, ``"1"``, ...).
        late_share, stale_share, malformed_share: shares of such events.
        iso_time_share: share of events whose time is an ISO-8601 string instead of epoch
            milliseconds (a block mixing both is read by the decoder as two groups).
        event_mix: event types and relative weights (default :data:`EVENT_MIX`), honored to
            1/65536.
        numeric_id_share: share of players whose ids are JSON integers (64-bit account ids).
        missing_share: share of events missing each optional common field.
        epoch_seconds_share: share of events whose time is epoch seconds instead of milliseconds.
        drift: share of events from mid-stream on that come from a drifted client release.

    Example:
        >>> src = SyntheticSource(events=5, block_rows=3, start_ms=0, malformed_share=0)
        >>> [(b.partition, b.first_offset, b.last_offset) for b in src.blocks()]
        [('0', 0, 2), ('0', 3, 4)]
        >>> import json
        >>> block = next(SyntheticSource(events=1, start_ms=0, late_share=0, stale_share=0,
        ...                              malformed_share=0).blocks())
        >>> event = json.loads(block.data)
        >>> sorted(k for k in event if k in ("event_id", "event_time", "event_type", "player_id"))
        ['event_id', 'event_time', 'event_type', 'player_id']
        >>> event["event_time"], block.meta["arrival_time"].to_pylist()[0].isoformat()
        (0, '1970-01-01T00:00:00+00:00')
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
        numeric_id_share: float = 0.2,
        missing_share: float = 0.1,
        epoch_seconds_share: float = 0.0,
        drift: float = 0.0,
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
        self.numeric_id_share = numeric_id_share
        self.missing_share = missing_share
        self.epoch_seconds_share = epoch_seconds_share
        self.drift = drift
        # Everything above fixes the stream's content (start_ms included: it is "now" unless
        # given, so two default runs are two streams).
        self._identity = json.dumps(
            {k: v for k, v in vars(self).items() if not k.startswith("_")},
            sort_keys=True,
            default=str,
        ) + json.dumps(event_mix, sort_keys=True)
        #: First event of the drifted part of the stream.
        self.drift_from = events // 2
        mix = event_mix or EVENT_MIX
        self._kinds = list(mix)
        self._kind_p = list(mix.values())
        #: ``event_type`` fragments per kind: following a comma, and opening the object.
        self._kind_fragments = tuple(
            pa.array([f'{lead}"event_type":"{k}"' for k in self._kinds], _TEXT) for lead in ",{"
        )
        self._context = (_context_table(reverse=False), _context_table(reverse=True))
        self._salt = _mix64(np.array([seed], dtype=np.int64))
        self._id_tables: dict[str, pa.Array] = {}  # by prefix

    @property
    def replay_id(self) -> str:
        """A digest of every parameter: the same ones generate the same events."""
        return hashlib.sha1(self._identity.encode()).hexdigest()[:12]

    def blocks(self) -> Iterator[SourceBlock | None]:
        next_offset = [0] * self.partitions
        started = time.monotonic()
        wall_ms = time.time() * 1000
        for number, first in enumerate(range(0, self.events, self.block_rows)):
            if self.stopping:
                return
            rows = min(self.block_rows, self.events - first)
            if self.rate:  # pace emission: block k is due at k * rows / rate seconds
                delay = started + (first + rows) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            partition = number % self.partitions
            offset = next_offset[partition]
            next_offset[partition] += rows
            data, arrival = self.render(first, rows, wall_ms if self.rate else self.start_ms)
            yield SourceBlock(
                partition=str(partition),
                first_offset=offset,
                last_offset=offset + rows - 1,
                data=data,
                meta={ARRIVAL_COLUMN: arrival},
                # Paced, an event is due at its scheduled wall time (its arrival, unrounded).
                due_ms=pa.array(wall_ms + (first + np.arange(rows)) * 1000 / self.rate)
                if self.rate
                else None,
            )

    def block_bytes(self, first: int, rows: int) -> bytes:
        """NDJSON of events ``first`` .. ``first + rows - 1``, arriving from ``start_ms`` on."""
        return self.render(first, rows, self.start_ms)[0]

    def render(self, first: int, rows: int, origin_ms: float) -> tuple[bytes, pa.Array]:
        """NDJSON of events ``first`` .. ``first + rows - 1`` and their arrival times.

        Event i arrives at ``origin_ms + i * step`` (step: ``1000 / rate`` ms, or 0.02 ms without a
        rate). Deterministic per (seed, origin_ms, first, rows, events): all randomness comes from
        a generator seeded with (seed, first), drawn in a fixed order whatever the knobs' values.

        Each line is joined once, in its SDK's field order: the rows are sorted by SDK (ids-first
        rows, then Unity rows), everything past the player is drawn in that order, each group is
        joined in its field order, and one take puts the lines back in event order.
        """
        rng = np.random.default_rng([self.seed, first])
        seq = np.arange(first, first + rows, dtype=np.int64)
        step = 1000 / self.rate if self.rate else _NOMINAL_STEP_MS
        arrival = np.floor(origin_ms + seq * step).astype(np.int64)
        player = rng.integers(0, self.players, rows)
        player_hash = self._player_hash(player)
        platform = _pick(_unit(_mix64(player_hash)), _PLATFORM_P)
        unity = _UNITY[platform]
        order = np.argsort(unity, kind="stable")
        split = rows - int(unity.sum())
        seq, arrival_sorted, player, player_hash, platform = (
            a[order] for a in (seq, arrival, player, player_hash, platform)
        )

        kind = _pick(rng.random(rows), self._kind_p)
        roll = rng.random(rows)
        late = rng.integers(5_000, 600_000, rows)  # 5 s to 10 min
        stale = rng.integers(3_600_001, 48 * 3_600_000, rows)  # past 1 h, up to 2 days
        shift = np.where(roll < self.stale_share, stale, 0)
        shift = np.where(
            (roll >= self.stale_share) & (roll < self.stale_share + self.late_share), late, shift
        )
        drifted = (seq >= self.drift_from) & (rng.random(rows) < self.drift)
        absent = rng.random((6, rows)) < self.missing_share
        draws = rng.random((8, rows))
        is_kind = {k: kind == i for i, k in enumerate(self._kinds)}
        none = np.zeros(rows, dtype=bool)
        session = is_kind.get("session_start", none) | is_kind.get("session_end", none)

        # Context code: one mixed-radix index per event; each field's last value means missing.
        context = np.zeros(rows, dtype=np.int64)
        for (_, values), index, missing in zip(
            _CONTEXT,
            (
                _pick(draws[1], _TIER_P),
                _pick(draws[2], _REGION_P),
                platform,
                np.where(drifted, _DRIFT_VERSION, _pick(draws[3], _APP_VERSION_P)),
            ),
            (absent[0], absent[1], absent[2] & ~session, absent[3] & ~session),
            strict=True,
        ):
            context = context * (len(values) + 1) + np.where(missing, len(values), index)
        # Engagement skews low (Kumaraswamy(2, 5): a closed-form stand-in for Beta(2, 5)).
        engagement = np.sqrt(1 - (1 - draws[5]) ** 0.2)
        seq_text = _text(seq)
        event_time = self._times(arrival_sorted - shift, draws[0])
        shared: dict[str, pa.Array | tuple[str | pa.Array, ...]] = {
            "player_id": self._ids(player, ',"player_id":'),
            "event_time": (',"event_time":', event_time),
            "quality_score": _score("quality_score", draws[4], ~absent[4]),
            "engagement_score": _score("engagement_score", engagement, ~absent[5]),
            "payload": self._payload(rng, is_kind, player, player_hash, arrival_sorted, drifted),
            "drift": self._drift(draws[6], draws[7], platform, drifted),
        }
        head = {name: _sliced(fragment, 0, split) for name, fragment in shared.items()}
        head["event_type"] = pc.take(self._kind_fragments[0], kind[:split])
        head["context"] = pc.take(self._context[0], context[:split])
        tail = {name: _sliced(fragment, split, rows) for name, fragment in shared.items()}
        tail["event_id"] = (',"event_id":"e', seq_text.slice(split), '"')
        tail["context"] = pc.take(self._context[1], context[split:])
        lines = [
            _line(_ORDER_IDS_FIRST, ('{"event_id":"e', seq_text.slice(0, split), '"'), head),
            _line(_ORDER_UNITY, (pc.take(self._kind_fragments[1], kind[split:]),), tail),
        ]
        back = np.empty(rows, dtype=np.int64)  # event -> its line among the sorted ones
        back[order] = np.arange(rows)
        bad = rng.random(rows) < self.malformed_share
        if bad.any():  # spoiled copies go after the good lines; the bad events point at them
            lines.append(
                self._spoil(pc.take(pa.chunked_array(lines), back[bad]).combine_chunks(), rng)
            )
            back[bad] = np.arange(rows, rows + int(bad.sum()))
        line = pc.take(pa.concat_arrays(lines), back)
        offsets = np.frombuffer(
            line.buffers()[1], dtype=np.int32, count=rows + 1, offset=4 * line.offset
        )
        data = line.buffers()[2].slice(offsets[0], offsets[rows] - offsets[0]).to_pybytes()
        # A view of the int64 array: 70x faster than converting it as timestamps.
        return data, pa.array(arrival).view(pa.timestamp("ms", "UTC"))

    def _ids(self, player: np.ndarray, prefix: str) -> pa.Array:
        """``prefix`` and each player's id as JSON (see :meth:`_id_text`), looked up in a table
        of all players' fragments when there are few enough players."""
        if self.players > _ID_TABLE_PLAYERS:
            return pc.binary_join_element_wise(prefix, self._id_text(player), "")
        if prefix not in self._id_tables:
            every = self._id_text(np.arange(self.players, dtype=np.int64))
            self._id_tables[prefix] = pc.binary_join_element_wise(prefix, every, "")
        return pc.take(self._id_tables[prefix], player)

    def _id_text(self, player: np.ndarray) -> pa.Array:
        """Each player's id as JSON: ``"p<i>"``, or an integer account id for the numeric players
        (chosen by a hash of the player and the seed, so a player keeps its kind)."""
        player_hash = self._player_hash(player)
        numeric = _unit(player_hash) < self.numeric_id_share
        named = pc.binary_join_element_wise('"p', _text(player[~numeric]), '"', "")
        p = player[numeric]
        high = (player_hash[numeric] & np.uint64(1)).astype(bool)
        account = np.where(high, _ACCOUNT_HIGH + 2 * p, _ACCOUNT_LOW + p)
        return _merge(len(player), [(~numeric, named), (numeric, _text(account))])

    def _player_hash(self, player: np.ndarray) -> np.ndarray:
        return _mix64(player.astype(np.uint64) ^ self._salt)

    def _times(self, event_ms: np.ndarray, roll: np.ndarray) -> pa.Array:
        """Event times as JSON: epoch ms, ISO-8601 strings or epoch seconds, by share."""
        iso = roll < self.iso_time_share
        seconds = ~iso & (roll < self.iso_time_share + self.epoch_seconds_share)
        if not (iso.any() or seconds.any()):
            return _text(event_ms)
        millis = ~iso & ~seconds
        # numpy formats ISO-8601 3x faster than Arrow's strftime; "YYYY-MM-DDTHH:MM:SS.mmmZ"
        # has one width (24) for years 1000 .. 9999.
        stamps = np.datetime_as_string(event_ms[iso].astype("datetime64[ms]"), timezone="UTC")
        chars = stamps.astype("S24").view(np.uint8).reshape(len(stamps), 24)
        return _merge(
            len(event_ms),
            [
                (millis, _text(event_ms[millis])),
                (iso, _fixed(_with_prefix('"', chars, '"'))),
                (seconds, _text(event_ms[seconds] / 1000)),
            ],
        )

    @staticmethod
    def _drift(
        bucket_roll: np.ndarray, device_roll: np.ndarray, platform: np.ndarray, drifted: np.ndarray
    ) -> pa.Array:
        """Fragments with the drifted release's new fields (``ab_bucket``, nested ``device``)."""
        if not drifted.any():
            return pa.nulls(len(drifted), _TEXT)
        bucket = _choice("ab_bucket", _AB_BUCKETS, _pick(bucket_roll[drifted], (1, 1, 1)))
        devices = [
            f',"device":{{"model":"{m}","os":"{o}","installed_at":"{at}","cohort_day":"{at[:10]}"}}'
            for (m, o), at in zip(_DEVICES, _INSTALLED, strict=True)
        ]
        device_index = platform[drifted] * 2 + (device_roll[drifted] < 0.5)
        device = pc.take(pa.array(devices, _TEXT), device_index)
        return _merge(len(drifted), [(drifted, pc.binary_join_element_wise(bucket, device, ""))])

    def _payload(
        self,
        rng: np.random.Generator,
        is_kind: dict[str, np.ndarray],
        player: np.ndarray,
        player_hash: np.ndarray,
        arrival: np.ndarray,
        drifted: np.ndarray,
    ) -> pa.Array:
        """Per-type fields as one fragment per event (null for types without any).

        Values are drawn for the rows of their type only, type by type in a fixed order.
        """
        join = pc.binary_join_element_wise
        parts: list[tuple[np.ndarray, pa.Array]] = []

        def session_ids(mask: np.ndarray, suffix: str) -> pa.Array:
            key = player_hash[mask] ^ (arrival[mask] // _SESSION_MS).astype(np.uint64)
            return _fixed(_with_prefix(',"session_id":"', _hex16(_mix64(key)), suffix))

        def money(mask: np.ndarray) -> tuple[pa.Array, pa.Array]:
            n = int(mask.sum())
            currency = _pick(rng.random(n), _CURRENCY_P)
            price = _pick(rng.random(n), _PRICE_P)
            jpy = currency == _JPY
            whole = (rng.random(n) < _WHOLE_SHARE) | jpy
            # The text of every (price, yen?, whole?) once, then a lookup per event.
            amount = pc.take(_AMOUNT_TEXT, (price * 4 + jpy * 2 + whole).astype(np.intp))
            return _quoted(amount, drifted[mask]), _choice("currency", _CURRENCIES, currency)

        if (mask := is_kind.get("session_start")) is not None:
            parts.append((mask, session_ids(mask, '"')))
        if (mask := is_kind.get("session_end")) is not None:
            n = int(mask.sum())
            length = _measure(rng.exponential(900.0, n), rng.random(n) < _WHOLE_SHARE, 2)
            ids = session_ids(mask, '","session_length_s":')
            parts.append((mask, join(ids, length, "")))
        if (mask := is_kind.get("level_up")) is not None:
            level = rng.integers(1, 101, int(mask.sum()))
            text = pc.take(_SMALL_INT_TEXT, level)
            drift = drifted[mask]
            if drift.any():
                text = pc.if_else(pa.array(drift & (level >= _MAX_LEVEL)), "max", text)
            parts.append((mask, join(',"level":', _quoted(text, drift), "")))
        if (mask := is_kind.get("purchase")) is not None:
            amount, currency = money(mask)
            item = _choice("item", _ITEMS, rng.integers(0, len(_ITEMS), len(amount)))
            parts.append((mask, join(',"amount":', amount, currency, item, "")))
        if (mask := is_kind.get("match_end")) is not None:
            n = int(mask.sum())
            seconds = _MATCH_MIN_S + rng.exponential(_MATCH_MEAN_S - _MATCH_MIN_S, n)
            duration = _measure(seconds, rng.random(n) < _WHOLE_SHARE, 3)
            result = _choice("result", _RESULTS, _pick(rng.random(n), _RESULT_P))
            kills = pc.take(_SMALL_INT_TEXT, _pick(rng.random(n), _KILLS_P))
            parts.append((mask, join(',"duration":', duration, result, ',"kills":', kills, "")))
        if (mask := is_kind.get("social")) is not None:
            n = int(mask.sum())
            partner = (player[mask] + rng.integers(1, max(self.players, 2), n)) % self.players
            partner_id = self._ids(partner, ',"partner_id":')
            action = _choice("action", _ACTIONS, _pick(rng.random(n), _ACTION_P))
            parts.append((mask, join(partner_id, action, "")))
        if (mask := is_kind.get("refund")) is not None:
            amount, currency = money(mask)
            parts.append((mask, join(',"amount":', amount, currency, "")))
        if not parts:
            return pa.nulls(len(player), _TEXT)
        return _merge(len(player), parts)

    @staticmethod
    def _spoil(line: pa.Array, rng: np.random.Generator) -> pa.Array:
        """The ``line`` s, each turned into one of four kinds of malformed event."""
        kind = np.array(_MALFORMED)[rng.integers(0, len(_MALFORMED), len(line))]
        truncated = pc.binary_join_element_wise(pc.utf8_slice_codeunits(line, 0, 40), "\n", "")
        player = r'"player_id":(?:"[^"]*"|\d+)'
        no_player = pc.replace_substring_regex(line, f"{player},|,{player}", "")
        bad_time = pc.replace_substring_regex(
            line, r'"event_time":(?:"[^"]*"|-?[0-9.]+)', '"event_time":"soon"'
        )
        spoiled = pc.case_when(
            pc.make_struct(
                pa.array(kind == "truncated"), pa.array(kind == "not_json"),
                pa.array(kind == "no_player"), field_names=["a", "b", "c"],
            ),
            truncated, pa.scalar("this is not json\n"), no_player, bad_time,
        )  # fmt: skip
        return spoiled
