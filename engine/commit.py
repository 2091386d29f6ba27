"""The commit protocol: staged lake files, Delta commits with source positions, hot pointers.

A checkpoint of a pipeline's partitions at positions ``{P: N}`` runs these numbered steps; a
crash between any two leaves the lake and the state consistent, and recovery finishes or
forgets the checkpoint (:meth:`Committer.recover`):

1. (the pipeline) drain the paths: every row read so far is in a staged file or in hot state;
2. (the pipeline) hot actors write their snapshot pieces for each P at N;
3. **prepare**: per P, ``_state/{pipeline}/{P}/epoch-{E}/PREPARED.json`` (E: our owner epoch)
   records N, the snapshot pieces, the contract's schema and every staged file of P, per
   table. From here the checkpoint can be finished by anyone;
4. **commit the tables**: per table, one Delta transaction with its staged files and, as app
   transactions, each P's position and our owner epoch (engine.delta; partitions another member
   owns now are fenced off and left out);
5. **point**: per P, ``epoch-{E}/CURRENT.json`` points at N and its pieces (engine.checkpoint);
6. (the pipeline) commit the positions to the source (Kafka).

Recovery of P (on assignment, after the claim has carried the previous owner's records into
our epoch's folder: engine.checkpoint): the pointer says M; a prepared checkpoint N > M is
finished (steps 4 and 5, each table only if its app transaction for P is below N, so nothing is
committed twice), and P resumes after N; else after M. A table never holds rows past its app
transaction version, and every such version has a prepare record, so the replay after N adds
each row once.

A prepare record lists a checkpoint's files, so it grows with the files one checkpoint stages,
not with the lake.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from engine.checkpoint import Checkpoint, Checkpoints, feeds_of
from engine.delta import LakeTables
from engine.lake import COLD, FEEDS, PATHS, StagedFile
from routers.errors import ThermoclineError

__all__ = [
    "COLD",
    "CRASH_ENV",
    "FEEDS",
    "PATHS",
    "CommitResult",
    "Committer",
    "RecoveryError",
    "TableSpec",
    "crash_point",
]

_log = logging.getLogger(__name__)

#: Test hook: ``THERMOCLINE_CRASH_AT=<step>[@<n>]`` kills the process (``os._exit(75)``, no
#: cleanup, as a power cut would) right after the ``n``-th time (default: the first) a
#: checkpoint passes that step: ``snapshot``, ``prepared``, ``committed:<table>``, ``pointed``,
#: ``kafka``. How the crash tests stop a run at an exact point of the protocol.
CRASH_ENV = "THERMOCLINE_CRASH_AT"
_passed: dict[str, int] = {}


def crash_point(step: str) -> None:
    """Exit at once if the crash hook names ``step`` (see :data:`CRASH_ENV`)."""
    hook = os.environ.get(CRASH_ENV)
    if not hook:
        return
    name, _, nth = hook.partition("@")
    if name != step:
        return
    _passed[step] = _passed.get(step, 0) + 1
    if _passed[step] >= int(nth or 1):
        _log.warning("crash hook: exiting after %s (time %d)", step, _passed[step])
        os._exit(75)


@dataclass(frozen=True)
class TableSpec:
    """How the pipeline commits to one table: its Delta partition columns, and the feeds whose
    positions it records (engine.delta: ``cold`` for the lake writer's rows, ``paths`` for
    the hot and warm paths' outputs)."""

    partition_by: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()


def _newer(candidate: Mapping[str, int], current: Mapping[str, int] | None) -> bool:
    """Whether ``candidate`` is past ``current``: a feed further, none behind."""
    if current is None:
        return True
    return all(candidate.get(f, -1) >= n for f, n in current.items()) and candidate != current


class RecoveryError(ThermoclineError):
    """A checkpoint a crash interrupted cannot be finished (its files are gone)."""


@dataclass
class CommitResult:
    """What one checkpoint's commit did."""

    fenced: list[str]
    files: int
    tables: int


class Committer:
    """Staged files and the commit protocol of one pipeline (see the module docstring).

    Args:
        checkpoints: the pipeline's checkpoint store (pointers, prepare records, pieces).
        tables: per table (its folder in the lake), its Delta partition columns and the feeds
            whose positions it records; a table not named has neither.
        replay_id: a bounded source's :attr:`~engine.sources.Source.replay_id`: its positions
            are committed under the pipeline's name and this id, so a rerun of the same
            content is committed once and other content is new.
    """

    def __init__(
        self,
        checkpoints: Checkpoints,
        tables: Mapping[str, TableSpec],
        replay_id: str | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        scope = checkpoints.pipeline if replay_id is None else f"{checkpoints.pipeline}@{replay_id}"
        self.tables = LakeTables(checkpoints.lake, scope)
        self.specs = dict(tables)
        self.staged: list[StagedFile] = []
        #: Tables this pipeline writes, known before their first file (for claims).
        self.known = set(tables)
        for table, spec in self.specs.items():
            self.tables.ensure(table, spec.partition_by)

    def stage(self, files: list[StagedFile]) -> None:
        """Files written by a path, to commit with the next checkpoint."""
        self.staged += files
        self.known.update(f.table for f in files)

    def claim(self, partitions: list[str]) -> None:
        """Own ``partitions`` (on assignment): an epoch committed to each table, then the
        checkpoint records of the owner the tables named before carried into our epoch's."""
        previous = self.tables.claim(sorted(self.known), partitions)
        for partition in partitions:
            self.checkpoints.adopt(
                partition, self.tables.epochs[partition], previous.get(partition, [])
            )

    def release(self, partitions: list[str]) -> None:
        """No longer own ``partitions`` (revoked): a later claim must not re-assert them."""
        self.tables.release(partitions)

    def commit(
        self,
        positions: Mapping[str, Mapping[str, int]],
        pieces: Mapping[str, list[str]] | None = None,
        schema: pa.Schema | None = None,
        checkpointed: bool = True,
    ) -> CommitResult:
        """Steps 3-5 for ``positions`` (and every staged file).

        Args:
            positions: per source partition, each feed's done position (``cold``, ``paths``;
                see engine.delta).
            pieces: hot snapshot pieces per partition (written already).
            schema: the stream's contract, saved with each pointer.
            checkpointed: a checkpointed source (prepare, fence, point); without it (a file or
                a synthetic run) only the tables are committed, with the positions when given.

        Returns:
            The partitions fenced off, and how many files and tables were committed.
        """
        files, self.staged = self.staged, []
        if not positions and not files:
            return CommitResult([], 0, 0)  # nothing moved: nothing to prepare or commit
        pieces = dict(pieces or {})
        # A partition claimed by another member since we did is fenced off at step 4, by the
        # tables' owner epochs (atomic); what we prepare before that goes to our own epoch's
        # folder, which its new owner never reads (engine.checkpoint). Our snapshot pieces then
        # stay: its new owner may have taken over our prepare record, which names them.
        fenced: set[str] = set()
        by_partition: dict[str, list[StagedFile]] = defaultdict(list)
        for staged in files:
            by_partition[staged.partition].append(staged)
        if checkpointed:
            for partition, feeds in positions.items():
                self.checkpoints.prepare(
                    partition,
                    dict(feeds),
                    pieces.get(partition, []),
                    schema,
                    [f.to_json() for f in by_partition.get(partition, [])],
                )
            crash_point("prepared")
        by_table: dict[str, list[StagedFile]] = defaultdict(list)
        for staged in files:
            by_table[staged.table].append(staged)
        for table in sorted(by_table):
            spec = self.specs.get(table, TableSpec())
            fenced.update(
                self.tables.commit(
                    table,
                    by_table[table],
                    positions,
                    spec.feeds,
                    spec.partition_by,
                    fence=checkpointed,
                )
            )
            crash_point(f"committed:{table}")
        if checkpointed:
            kept = {p: n for p, n in positions.items() if p not in fenced}
            self.checkpoints.save(kept, pieces, schema)
            crash_point("pointed")
        return CommitResult(sorted(fenced), len(files), len(by_table))

    def recover(self, partition: str, newer_than: int | None = None) -> Checkpoint | None:
        """The partition's checkpoint, a prepared one finished first (see the module docs).

        Args:
            newer_than: our own last checkpoint of it: an older or equal one is not loaded.
        """
        prepared = self.checkpoints.prepared(partition)
        current = self.checkpoints.feeds(partition)
        if prepared is not None and _newer(feeds_of(prepared), current):
            feeds = feeds_of(prepared)
            position = int(prepared["position"])
            files = [StagedFile.from_json(f) for f in prepared["files"]]
            lake = self.checkpoints.lake
            missing = [f for f in files if not lake.fs.exists(lake.path(f.table, f.path))]
            if missing:
                raise RecoveryError(
                    f"recovery: partition {partition}: the checkpoint at {position} a crash"
                    f" interrupted names {len(missing)} files that are gone (first:"
                    f" {missing[0].table}/{missing[0].path}); a vacuum with a retention shorter"
                    " than the pipeline's downtime removed them. Operator action: restore them,"
                    " or delete its PREPARED.json to replay from the last checkpoint (rows of"
                    " tables already committed past it would then be written twice)."
                )
            tables = {f.table for f in files}
            for table in sorted(tables):
                chosen = [f for f in files if f.table == table]
                spec = self.specs.get(table, TableSpec())
                self.tables.commit(table, chosen, {partition: feeds}, spec.feeds, spec.partition_by)
            self.checkpoints.point(partition, feeds, prepared["hot"], prepared.get("schema"))
            _log.warning(
                "recovery: partition %s: finished the checkpoint at %d a crash interrupted"
                " (%d files in %d tables)",
                partition,
                position,
                len(files),
                len(tables),
            )
        return self.checkpoints.load(partition, newer_than=newer_than)
