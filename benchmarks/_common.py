"""Helpers shared by the benchmarks: timing, the game-event maker, result output."""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

RESULTS = Path(__file__).resolve().parent / "results"
EVENT_TYPES = np.array(["session_start", "level_up", "purchase", "match_end", "social", "refund"])


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` runs after one warm-up (allocator and caches warm)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def game_batch(rows: int, now: datetime, seed: int = 0) -> pa.RecordBatch:
    """A batch of synthetic game events with the columns the demo policy reads."""
    rng = np.random.default_rng(seed)
    now_ms = int(now.timestamp() * 1000)
    ages = rng.exponential(600_000, rows).astype(np.int64)  # mean 10 minutes, a tail past 1 h
    return pa.record_batch(
        {
            "event_id": pa.array(np.char.add("e", np.arange(rows).astype(str))),
            "player_id": pa.array(np.char.add("p", rng.integers(0, 100_000, rows).astype(str))),
            "event_time": pa.array(now_ms - ages, pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "event_type": pa.array(EVENT_TYPES[rng.integers(0, len(EVENT_TYPES), rows)]),
            "tier": pa.array(np.array(["vip", "free", "gold"])[rng.integers(0, 3, rows)]),
            "region": pa.array(np.array(["eu-1", "us-2", "test-3"])[rng.integers(0, 3, rows)]),
            "level": pa.array(rng.integers(0, 100, rows)),
            "quality_score": pa.array(rng.random(rows)),
            "engagement_score": pa.array(rng.random(rows)),
        }
    )


def emit(name: str, record: dict[str, Any], results: Path = RESULTS) -> Path:
    """Print one JSON record and keep it in ``benchmarks/results/NAME.json``."""
    record = {
        "benchmark": name,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        **record,
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return path


_IDS = re.compile(rb'("(?:player_id|partner_id|event_id)":)(-?[0-9]+)')


def calibration_rate(blocks: list[bytes], events: int) -> float:
    """Events/s of a bare single-threaded ``pyarrow.json.read_json`` over the same bytes.

    Machines here differ 2-3x, so rates are reported beside this, measured in the same run. A
    bare read cannot pass what the decoder exists for, so before timing (not timed) malformed
    lines and string times (a share of a percent) are dropped and integer ids quoted (a few bytes
    per event); ``events`` is the count
    of the original blocks, as the rates compared with it count them.
    """
    readable = []
    for data in blocks:
        lines = [
            x
            for x in data.splitlines()
            if x.startswith(b"{") and x.endswith(b"}") and b'"event_time":"' not in x
        ]
        readable.append(_IDS.sub(rb'\1"\2"', b"\n".join(lines)))
    options = pj.ReadOptions(use_threads=False, block_size=1 << 30)
    started = time.perf_counter()
    for piece in readable:
        pj.read_json(pa.BufferReader(piece), read_options=options)
    return events / (time.perf_counter() - started)
