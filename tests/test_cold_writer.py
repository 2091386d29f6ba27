"""The lake writer's triggers (engine.cold): files of the target size per source partition, an
age bound per partition, a memory bound for all; only the flushed partitions' blocks are done.

The writer's class is used in this process (its actor runs the same code), on a real folder.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.cold import _ColdWriter
from engine.sources import SyntheticSource
from routers import EventSchema, concat_conformed, decode_ndjson, new_contract

SCHEMA = EventSchema()
EMPTY_DEAD = pa.table({"line": pa.array([], pa.int64()), "reason": pa.array([], pa.string())})


def telemetry(events: int, seed: int) -> list[pa.RecordBatch]:
    """Decoded synthetic game events, in blocks of 5,000, all in the current hour (no late or
    stale rows: one file per flush, so sizes are the trigger's own)."""
    source = SyntheticSource(
        events=events, block_rows=5_000, seed=seed, late_share=0, stale_share=0, malformed_share=0
    )
    contract = new_contract(SCHEMA)  # one stream, one schema (as the pipeline decodes)
    blocks = [b for b in source.blocks() if b is not None]
    return [decode_ndjson(b.data or b"", SCHEMA, contract=contract).good for b in blocks]


def writer(
    lake: Path,
    target: int = 1 << 30,
    flush_interval_s: float = 3600.0,
    flush_rows: int = 10_000_000,
) -> _ColdWriter:
    # Built on a thread of its own: the writer lowers the CPU priority of the thread that builds
    # it (engine.priority), and on the test's main thread that would lower every process the
    # test session starts later (a local Ray's workers included) for good.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(
            _ColdWriter, str(lake), {}, "src", "pipe", SCHEMA, (), flush_rows, 1 << 30,
            flush_interval_s, target_file_size=target,
        ).result()  # fmt: skip


def test_a_partition_is_staged_at_the_target_size_the_others_wait(tmp_path: Path) -> None:
    target = 400_000  # bytes of Parquet
    cold = writer(tmp_path, target=target)
    big, small = telemetry(150_000, seed=1), telemetry(5_000, seed=2)
    staged, done = [], []
    cold.write(0, "b", 0, 4_999, small[0], EMPTY_DEAD)  # partition b: one small block
    for i, batch in enumerate(big, start=1):  # partition a: size-triggered flushes
        report = cold.write(i, "a", i * 5_000, i * 5_000 + 4_999, batch, EMPTY_DEAD)
        staged += report.staged
        done += report.seqs
    assert staged, "no size-triggered flush in 150K events"
    assert {f.partition for f in staged} == {"a"} and 0 not in done  # b still buffered
    sizes = [f.size for f in staged]
    # A file's size is its encoded bytes (no estimate): it ends within one block's row group
    # past the target (a block here is ~3.5K rows, ~90 KB of Parquet).
    assert all(target <= size < 1.25 * target for size in sizes), sizes
    final = cold.flush()  # the end of a run: the rest of a (if any), and b
    assert "b" in {f.partition for f in final.staged}
    assert sorted(done + final.seqs) == list(range(len(big) + 1))  # every block once
    rows = {p: sum(f.rows for f in staged + final.staged if f.partition == p) for p in "ab"}
    assert rows == {"a": sum(b.num_rows for b in big), "b": small[0].num_rows}


def test_age_flushes_only_the_partition_that_waited(tmp_path: Path) -> None:
    cold = writer(tmp_path, flush_interval_s=0.3)
    rows = telemetry(10_000, seed=3)
    assert cold.write(0, "old", 0, 4_999, rows[0], EMPTY_DEAD).seqs == []
    time.sleep(0.35)
    report = cold.write(1, "new", 0, 4_999, rows[1], EMPTY_DEAD)  # "old" is due, "new" is not
    assert report.seqs == [0] and {f.partition for f in report.staged} == {"old"}
    assert cold.tick().seqs == []
    time.sleep(0.35)
    assert cold.tick().seqs == [1]  # a quiet stream: the pipeline's once-a-second tick


def test_the_writer_leaves_the_callers_priority_alone(tmp_path: Path) -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    writer(tmp_path)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_the_memory_bound_flushes_everything(tmp_path: Path) -> None:
    rows = telemetry(10_000, seed=4)
    cold = writer(tmp_path, flush_rows=8_000)
    assert cold.write(0, "a", 0, 4_999, rows[0], EMPTY_DEAD).seqs == []
    report = cold.write(1, "b", 0, 4_999, rows[1], EMPTY_DEAD)  # 10,000 rows >= 8,000
    assert report.seqs == [0, 1] and report.cold_rows == 10_000
    assert {f.partition for f in report.staged} == {"a", "b"}


def drifting_blocks(seed: int) -> list[pa.RecordBatch]:
    """Decoded blocks of telemetry shaped like a real stream: fields differ by event type,
    a column appears only in later blocks (``tier``), a number first sent as an integer later
    comes with a fraction (``amount``), and a third of the rows are hours late (12 hour
    folders), as one contract decodes them."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(minute=30)
    contract = new_contract(SCHEMA)
    blocks = []
    for block in range(8):
        lines = []
        for i in range(600):
            t = now - timedelta(hours=rng.randrange(1, 13)) if rng.random() < 0.33 else now
            event: dict[str, object] = {
                "event_id": f"e{block}-{i}",
                "player_id": rng.randrange(10**9),
                "event_time": t.isoformat(),
                "event_type": rng.choice(["purchase", "level_up", "social"]),
            }
            if event["event_type"] == "purchase":
                event["amount"] = 5 if block < 3 else round(rng.uniform(0.5, 99), 2)
            elif event["event_type"] == "level_up":
                event["level"] = rng.randrange(1, 90)
            if block >= 4 and rng.random() < 0.5:
                event["tier"] = rng.choice(["vip", "free"])
            lines.append(json.dumps(event))
        data = "\n".join(lines).encode()
        blocks.append(decode_ndjson(data, SCHEMA, contract=contract).good)
    return blocks


def test_a_drifting_late_stream_is_written_whole_in_its_hour_folders(tmp_path: Path) -> None:
    blocks = drifting_blocks(seed=5)
    assert blocks[0].schema != blocks[-1].schema  # the stream's schema grew under the writer
    cold = writer(tmp_path, target=20_000)  # small files: some fill up while blocks come
    staged = []
    for i, batch in enumerate(blocks):
        staged += cold.write(i, "p", i * 600, i * 600 + 599, batch, EMPTY_DEAD).staged
    staged += cold.flush().staged
    back = []
    for f in staged:
        table = pq.read_table(tmp_path / f.table / f.path)
        assert table.num_rows == f.rows
        hours = {t.hour for t in table["event_time"].to_pylist()}
        assert hours == {int(f.partition_values["hour"])}, f.path  # each row in its own hour
        assert f.path.startswith(f"dt={f.partition_values['dt']}/hour=")
        back.append(table)
    got = concat_conformed(back).sort_by("event_id").to_pylist()
    sent = concat_conformed(blocks).sort_by("event_id").to_pylist()
    assert len(got) == len(sent) == 8 * 600  # every row once
    for row_got, row_sent in zip(got, sent, strict=True):  # every value as decoded
        for column, value in row_sent.items():
            want = float(value) if column == "amount" and value is not None else value
            assert row_got[column] == want, (column, row_sent["event_id"])
    assert len({f.partition_values["hour"] for f in staged}) == 13


def test_a_files_row_groups_are_encoded_as_rows_come(tmp_path: Path) -> None:
    """What the writer holds is encoded Parquet, not the Arrow rows: its held bytes stay a
    fraction of what came in, and the file has several row groups."""
    blocks = telemetry(60_000, seed=6)
    cold = writer(tmp_path, target=2 << 20)  # row groups of 1 MiB of Arrow rows
    for i, batch in enumerate(blocks):
        cold.write(i, "a", i * 5_000, i * 5_000 + 4_999, batch, EMPTY_DEAD)
    arrow = sum(b.nbytes for b in blocks)
    held = cold._held["a"].held_bytes()
    assert held < arrow / 3, (held, arrow)
    (staged,) = cold.flush().staged
    metadata = pq.ParquetFile(tmp_path / staged.table / staged.path).metadata
    assert metadata.num_rows == sum(b.num_rows for b in blocks) and metadata.num_row_groups > 1


def test_a_type_that_comes_later_in_a_flush_makes_one_committable_file(tmp_path: Path) -> None:
    """A list first sent empty (its item type unknown) then with numbers, in one flush: one file
    with the list's real type, which the Delta table takes (a file each, one with the empty
    list stored as strings, would not unify)."""
    from engine.delta import LakeTables
    from engine.lake import COLD, EVENTS_DIR, Lake

    now = datetime.now(timezone.utc).isoformat()
    contract = new_contract(SCHEMA)
    blocks = [
        decode_ndjson(
            json.dumps({"event_id": f"e{i}", "player_id": "p", "event_time": now,
                        "event_type": "match_end", "tags": tags}).encode(),
            SCHEMA, contract=contract,
        ).good
        for i, tags in enumerate([[], [1.5, 2], None])
    ]  # fmt: skip
    cold = writer(tmp_path)
    for i, batch in enumerate(blocks):
        cold.write(i, "p", i, i, batch, EMPTY_DEAD)
    staged = cold.flush().staged
    assert len(staged) == 1
    tables = LakeTables(Lake(str(tmp_path)), "pipe")
    assert tables.commit(EVENTS_DIR, staged, {"p": {COLD: 2}}, (COLD,), ("dt", "hour")) == []
    back = Lake(str(tmp_path)).read(EVENTS_DIR).sort_by("event_id")
    assert back["tags"].to_pylist() == [[], [1.5, 2.0], None]


def test_blocks_sent_together_are_written_and_acknowledged_as_one_by_one(tmp_path: Path) -> None:
    """The driver joins a partition's small blocks into one call (engine.cold._SEND_ROWS): a
    drifting, late stream sent so, with each block's dead letters, gives the same rows, every
    block done once, every dead letter with its offset."""
    blocks = drifting_blocks(seed=7)
    dead = [
        pa.table({"raw": [f"bad {i}".encode()], "reason": ["invalid_json"], "line": [600],
                  "offset": [i * 601 + 600]})
        for i in range(len(blocks))
    ]  # fmt: skip
    cold = writer(tmp_path, target=20_000)
    staged, done = [], []
    for i in range(0, len(blocks), 3):  # as the driver sends them: 3, 3, 2 blocks per call
        group = range(i, min(i + 3, len(blocks)))
        report = cold.write_blocks(
            "p",
            [(j, j * 601, j * 601 + 600) for j in group],
            concat_conformed([blocks[j] for j in group]).combine_chunks().to_batches()[0],
            concat_conformed([dead[j] for j in group]),
        )
        staged, done = staged + report.staged, done + report.seqs
    final = cold.flush()
    staged, done = staged + final.staged, done + final.seqs
    assert sorted(done) == list(range(len(blocks)))  # every block once
    events = [f for f in staged if not f.table.startswith("_dead")]
    got = concat_conformed([pq.read_table(tmp_path / f.table / f.path) for f in events])
    sent = concat_conformed(blocks)
    assert got.num_rows == sent.num_rows == 8 * 600
    assert sorted(got["event_id"].to_pylist()) == sorted(sent["event_id"].to_pylist())
    (letters,) = [f for f in staged if f.table.startswith("_dead")]
    back = pq.read_table(tmp_path / letters.table / letters.path)
    assert back["offset"].to_pylist() == [i * 601 + 600 for i in range(len(blocks))]
    assert set(back["partition"].to_pylist()) == {"p"}
