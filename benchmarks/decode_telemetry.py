"""Decode rate on realistic heterogeneous telemetry vs uniform events, beside a calibration.

Machines here differ 2-3x, so every rate is reported with the calibration measured in the same
run over the same bytes: a bare single-threaded ``pyarrow.json.read_json`` of the heterogeneous
blocks. Rounds alternate (uniform, heterogeneous, calibration) and the medians are reported, with
the per-round ratios.

    python -m benchmarks.decode_telemetry [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks._common import RESULTS, calibration_rate, emit
from engine.config import load_config
from engine.sources import SyntheticSource
from routers import DecodeHints, decode_ndjson, new_contract

START_MS = 1_764_000_000_000
ROOT = Path(__file__).resolve().parents[1]


def blocks(events: int, **knobs: float) -> list[bytes]:
    source = SyntheticSource(events=events, block_rows=50_000, start_ms=START_MS, **knobs)
    return [b.data for b in source.blocks() if b.data is not None]


def decode_rate(data: list[bytes], events: int) -> float:
    schema = load_config(ROOT / "examples" / "demo.yaml").policy.schema  # as `make run` decodes
    contract, hints = new_contract(schema), DecodeHints()
    started = time.perf_counter()
    for block in data:
        decode_ndjson(block, schema, hints, contract)
    return events / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    n = args.events
    # Uniform: every field, one order, one type, string ids (the old generator's shape).
    uniform = blocks(n, numeric_id_share=0.0, missing_share=0.0)
    hetero = blocks(n)  # the defaults: per-type fields, missing fields, numeric ids
    drift = blocks(n, drift=0.2)
    rounds = []
    for _ in range(args.rounds):
        rounds.append(
            {
                "uniform": decode_rate(uniform, n),
                "heterogeneous": decode_rate(hetero, n),
                "drift_0.2": decode_rate(drift, n),
                "calibration": calibration_rate(hetero, n),
            }
        )
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratios = [r["uniform"] / r["heterogeneous"] for r in rounds]
    result = {
        "events": n,
        "rates_events_per_s": {k: round(v) for k, v in median.items()},
        # Per event, as the target is stated; events differ in size, so bytes are shown too.
        "bytes_per_event": {
            "uniform": round(sum(map(len, uniform)) / n),
            "heterogeneous": round(sum(map(len, hetero)) / n),
        },
        "uniform_over_heterogeneous": round(statistics.median(ratios), 3),
        "heterogeneous_over_calibration": round(median["heterogeneous"] / median["calibration"], 3),
        "target_uniform_over_heterogeneous": 1.3,
        "rounds": [{k: round(v) for k, v in r.items()} for r in rounds],
    }
    emit("decode_telemetry", result, args.results)


if __name__ == "__main__":
    main()
