"""``millrace stream --source NAME``: a source's Redis stream, consumed under its contract in micro-batches.

Each micro-batch of entries (read through the consumer group ``streaming.group``) goes through:

1. **Windows**: each record's event time puts it in a fixed event-time window; a record whose
   window closed (behind the watermark by more than the allowed lateness, ``pipelines.windows``)
   is quarantined as ``too_late`` in ``<quarantine>/<source>/_stream/``.
2. **Landing**: the other records land as one JSON-lines file per partition, named by the batch's
   entry-id range (``<landing>/<source>/<first day>/stream-<first>_<last>.jsonl``), renamed into
   place. Once the online update below is done too, the stream's state
   (``<state>/streams/<source>.json``) records the batch's last entry: an entry at or before it is
   never landed again (redelivered after a crash, it changes nothing); files of a batch killed
   before that are removed at the next start, and the batch is done again whole.
3. **Decode and online**: the batch decode (``decode_files``) on each file's bytes: the same rows,
   rules and quarantine a batch ingest of the file gives. The touched entities' views are computed
   by ``compute_view`` over their whole history (the lake plus the rows landed since its last
   commit, duplicates resolved as the lake resolves them) and written where the online store holds
   nothing newer (``features.materialize.update_online``).
4. **Lake**: every ``streaming.commit_seconds`` the partitions the stream landed are committed by the
   batch write path (``write_partitions``, expectations included), under the source's write lock,
   in a thread of its own while the micro-batches go on; only then are the entries acknowledged
   (XACK). A batch ingest of those partitions reads the same landing files, so it cannot double them.

A consumer killed anywhere leaves entries unacknowledged; the next one claims them (XAUTOCLAIM),
removes landing files a batch never finished naming, commits what was landed, and goes on: the lake
and the online store end as if nothing had happened (tests/pipelines/test_stream_kill.py).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import coerce
from millrace.contracts.faults import checkpoint
from millrace.contracts.project import Project
from millrace.pipelines import commit, lake
from millrace.pipelines.decode import PROVENANCE, LandingFile, decode_files, partition_of_date
from millrace.pipelines.errors import LandingInvalid, PipelineError, SourceBusy
from millrace.pipelines.lock import source_lock
from millrace.pipelines.readers import read_records
from millrace.pipelines.stream_client import connect
from millrace.pipelines.stream_files import (STREAM_FILE_PREFIX, id_key, is_stream_file, last_entry, put,
                                             remove_unfinished, stream_quarantine_dir)
from millrace.pipelines.windows import TOO_LATE, Windows
from millrace.validation import quarantine as Q
from millrace.validation import reasons as R

EPOCH = dt.date(1970, 1, 1)
BLOCK_MS = 100            # how long one read waits for new entries
ACK_CHUNK = 5_000


class Entry(NamedTuple):  # a tuple: tens of thousands are made per second
    id: str
    record: bytes
    produced_at: float | None


@dataclass
class StreamState:
    """What the stream has landed: every entry up to ``landed_until`` is in a landing file (or the
    too-late quarantine), and the watermark those entries moved to."""

    landed_until: str = "0-0"
    watermark_us: int | None = None

    @classmethod
    def read(cls, path: str) -> "StreamState":
        if not lake.exists(path):
            return cls()
        data = json.loads(lake.read_bytes(path))
        return cls(landed_until=str(data["landed_until"]), watermark_us=data.get("watermark_us"))

    def write(self, path: str) -> None:
        from millrace.contracts.storage import write_atomically

        write_atomically(path, json.dumps(self.__dict__).encode(), str(os.getpid()))


@dataclass(frozen=True)
class CommitWork:
    """What one lake commit covers: the partitions landed in (None: at start, every partition
    with stream files), the entries acknowledged after it, the last entry landed when it was taken
    (later batches' files wait for the next commit) and how many buffered batches that is."""

    partitions: frozenset[str] | None
    ack: tuple[str, ...]
    landed_until: str
    buffered: int


@dataclass
class CommitDone:
    work: CommitWork
    committed: list[str] = field(default_factory=list)   # partition values
    history: pa.Table | None = None   # the source's lake rows after the commit (None: nothing written)
    deferred: str = ""                # why not: the source's lock was held by another writer


@dataclass
class StreamReport:
    source: str
    stream: str
    group: str
    consumer: str
    entries: int = 0           # read, redelivered ones included
    batches: int = 0           # micro-batches of them
    reclaimed: int = 0         # taken over from a consumer that died (XAUTOCLAIM)
    redelivered: int = 0       # read again after a restart, already landed: only acknowledged
    landed: int = 0            # records written to landing files
    good: int = 0              # of them, rows that decode under the contract
    quarantined: int = 0       # of them, rows the decode rejected (quarantined at the lake commit)
    too_late: int = 0          # quarantined at once: their window had closed
    acknowledged: int = 0
    lake_commits: int = 0
    commits_deferred: int = 0  # a batch writer held the source's lock: tried again at the next interval
    partitions: set = field(default_factory=set)       # committed by this run
    online_written: dict = field(default_factory=dict)  # view -> entities written
    freshness: list = field(default_factory=list)       # seconds, entry produced -> its batch online
    lag: int | None = None     # entries in the stream not yet delivered to the group, at the end
    watermark: str | None = None   # the newest usable event time seen (UTC), where the windows stand
    seconds: float = 0.0
    busy_seconds: float = 0.0  # from the first entry read to the last batch done, plus the closing commit
    stopped: str = ""

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.freshness, q)) if self.freshness else None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "freshness"}
        out["partitions"] = sorted(self.partitions)
        out["freshness_p50_s"], out["freshness_p99_s"] = self.percentile(50), self.percentile(99)
        out["rate"] = self.entries / self.seconds if self.seconds else 0.0
        return out


class StreamJob:
    """One consumer of one source's stream (one at a time per source: ``<source>-stream`` lock)."""

    def __init__(self, project: Project, source: str, client=None, consumer: str | None = None,
                 metrics=None, say=lambda line: None):
        from millrace.features.online_write import OnlineWriter
        from millrace.features.spec import load_features

        self.project, self.source, self.say = project, source, say
        self.contract = project.contract(source)
        if self.contract.event_time is None:
            raise PipelineError(f"source '{source}' has no event-time field: a stream needs one for its windows "
                                f"(fix: set the eventTime property in its contract)")
        self.config = project.config.streaming
        self.windows = Windows.of_seconds(self.config.window_seconds, self.config.allowed_lateness_seconds)
        self.key = project.stream_key(source)
        self.client = client or connect(project, source)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics
        self.state_path = lake.join(project.state_dir, "streams", f"{source}.json")
        self.state = StreamState.read(self.state_path)
        self.features = load_features(project) if (project.root / "features.yaml").exists() else None
        self.views = [] if self.features is None else [
            n for n, v in self.features.views.items() if v.online and v.source == source and not v.static]
        self.writer = OnlineWriter(project, self.features) if self.views else None
        self.report = StreamReport(source, self.key, self.config.group, self.consumer)
        self.run_id = "stream-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
        self.to_ack: list[str] = []
        self.landed_partitions: set[str] = set()
        self.buffer: list[pa.Table] = []   # rows landed since the lake's last commit
        self.history: pa.Table | None = None
        self.lookups: dict[str, pa.Table | None] = {}
        self._suite = None
        self._rows_seen = 0
        self._skipped: set[str] = set()
        self._reading_pending, self._pending_after = True, "0"  # a restart's own pending entries first
        self._batch_size = self.config.batch_entries

    # -- the run ----------------------------------------------------------------------------------

    def run(self, until_idle: float | None = None, max_seconds: float | None = None,
            stop: threading.Event | None = None) -> StreamReport:
        """Micro-batches until a stop condition. The lake commit runs in a thread of its own, so
        the online updates go on while it decodes, checks and writes whole partitions."""
        stop = stop or threading.Event()
        started = time.monotonic()
        with source_lock(self.project.state_dir, f"{self.source}-stream"), \
                ThreadPoolExecutor(1, thread_name_prefix=f"{self.source}-lake-commit") as committer:
            self._start()
            self.say(f"{self.key}: reading as {self.consumer} (group {self.config.group})")
            commit: Future | None = None
            last_arrival = last_commit = time.monotonic()
            first_read = last_done = None
            while True:
                entries = self._read()
                now = time.monotonic()
                if entries:
                    first_read = first_read or now
                    self._batch(entries)
                    last_arrival, last_done = now, time.monotonic()
                if commit is not None and commit.done():
                    self._committed(commit.result())
                    commit = None
                if commit is None and (self.to_ack or self.landed_partitions) \
                        and now - last_commit >= self.config.commit_seconds:
                    commit = committer.submit(self._commit_lake, self._take_commit())
                    last_commit = now
                if stop.is_set():
                    self.report.stopped = "signal"
                elif max_seconds is not None and now - started >= max_seconds:
                    self.report.stopped = f"--max-seconds {max_seconds:g}"
                elif until_idle is not None and not entries and now - last_arrival >= until_idle:
                    self.report.stopped = f"idle for {until_idle:g} s"
                if self.report.stopped:
                    break
            closing = time.monotonic()
            if commit is not None:
                self._committed(commit.result())
            self._committed(self._commit_lake(self._take_commit()))
            if first_read is not None:
                self.report.busy_seconds = last_done - first_read + time.monotonic() - closing
        self.report.lag = self._lag()
        if self.state.watermark_us is not None:
            newest = dt.datetime.fromtimestamp(self.state.watermark_us / 1e6, dt.timezone.utc)
            self.report.watermark = newest.isoformat()
        self.report.seconds = time.monotonic() - started
        if self.writer:
            self.writer.close()
        return self.report

    def _start(self) -> None:
        """The group (from the stream's start), what a killed consumer left, and the history."""
        import redis

        try:
            self.client.xgroup_create(self.key, self.config.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        remove_unfinished(self.project.landing, self.project.quarantine, self.source, self.state.landed_until)
        self._reclaim()
        # files landed before a kill, not yet in the lake
        self._committed(self._commit_lake(CommitWork(None, (), self.state.landed_until, 0)))
        if self.history is None:
            self.history = self._lake_history()
        self._load_lookups()
        self._expectations()  # seconds of imports: before the first read, not in a commit next to batches
        # shown by XINFO CONSUMERS from now on, even while the stream is idle (a read that finds
        # nothing creates no consumer): ready
        self.client.xgroup_createconsumer(self.key, self.config.group, self.consumer)

    def _reclaim(self) -> None:
        """Entries delivered to consumers that died: one consumer runs per source (its lock), so
        every pending entry of the group is someone's unfinished work."""
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = self.client.xautoclaim(self.key, self.config.group, self.consumer, 0,
                                                         start_id=cursor, count=1000)
            self.report.reclaimed += len(claimed)
            if _text(cursor) == "0-0":
                break

    def _read(self) -> list[Entry]:
        """This consumer's pending entries first (a restart's), then new ones."""
        start = self._pending_after if self._reading_pending else ">"
        reply = self.client.xreadgroup(self.config.group, self.consumer, {self.key: start}, count=self._batch_size,
                                       block=None if self._reading_pending else BLOCK_MS)
        rows = reply[0][1] if reply else []
        # a full read means entries are waiting: take more at a time until the consumer is level
        wanted = self._batch_size * 2 if len(rows) >= self._batch_size else self._batch_size // 2
        self._batch_size = max(self.config.batch_entries, min(self.config.backlog_batch_entries, wanted))
        if self._reading_pending and not rows:
            self._reading_pending = False
            return self._read()
        entries = []
        for entry_id, fields in rows:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if not fields:  # trimmed from the stream while pending: nothing to land
                self.to_ack.append(entry_id)
                continue
            produced = fields.get(b"produced_at")
            entries.append(Entry(entry_id, fields.get(b"record", b""), float(produced) if produced else None))
        if self._reading_pending and rows:  # the pending list is read by id: go on after the last
            self._pending_after = _text(rows[-1][0])
        return entries

    # -- one micro-batch --------------------------------------------------------------------------

    def _batch(self, entries: list[Entry]) -> None:
        checkpoint("stream_mid_batch")
        self.report.entries += len(entries)
        self.report.batches += 1
        self._count("read", len(entries))
        self.to_ack.extend(e.id for e in entries)
        landed_until = id_key(self.state.landed_until)
        first_new = 0  # entries come in id order: those already landed (redelivered) come first
        while first_new < len(entries) and id_key(entries[first_new].id) <= landed_until:
            first_new += 1
        new = entries[first_new:]
        self.report.redelivered += len(entries) - len(new)
        if not new:
            return
        now_us = int(time.time() * 1_000_000)
        records = [_one_line(e.record) for e in new]
        event_us = self._event_times(records)
        limit = now_us + self.contract.future_tolerance_seconds * 1_000_000
        usable = ~np.isnan(event_us) & (np.nan_to_num(event_us, nan=0) <= limit)  # moves the watermark
        placed, watermark = self.windows.classify(np.nan_to_num(event_us, nan=0).astype(np.int64),
                                                  self.state.watermark_us, advances=usable)
        late = (placed == TOO_LATE) & usable
        name = f"{new[0].id}_{new[-1].id}"
        quarantine = []
        if late.any():
            quarantine.append(self._too_late([e for e, x in zip(new, late) if x],
                                             [r for r, x in zip(records, late) if x], event_us[late]))
        unplaced = ~usable
        if unplaced.any():
            bad, placed_anyway = self._unplaceable([e for e, x in zip(new, unplaced) if x],
                                                   [r for r, x in zip(records, unplaced) if x], now_us)
            quarantine.append(bad)
            unplaced[np.flatnonzero(unplaced)[placed_anyway]] = False
        if quarantine:
            self._write_quarantine(pa.concat_tables(quarantine), name)
        files = self._land(records, event_us, late | unplaced, usable, name)
        checkpoint("stream_after_landing")
        good = [self._decode(partition, path, data, now_us) for partition, path, data in files]
        rows = pa.concat_tables(good) if good else None
        if rows is not None and rows.num_rows:
            self.buffer.append(self._provenance(rows.drop_columns(list(PROVENANCE))))
            self._update_online(rows)
        # last: a batch killed before this lands again whole (its files are removed at the next
        # start), so its online update is done again too
        self.state.watermark_us = watermark
        self.state.landed_until = new[-1].id
        self.state.write(self.state_path)
        done = time.time()
        self.report.freshness.extend(done - e.produced_at for e in new if e.produced_at is not None)
        if self.metrics:
            for e in new:
                if e.produced_at is not None:
                    self.metrics.freshness.labels(self.source).observe(done - e.produced_at)

    def _event_times(self, records: list[bytes]) -> np.ndarray:
        """Microseconds of each record's event time, NaN where it has none that parses: the batch
        reader's JSON-lines parse and the contract's typing, on the event-time field alone."""
        name = self.contract.event_time
        read = read_records(self.key, b"\n".join(records) + b"\n", (name,), self.contract.landing, fmt="jsonl")
        values, failed = coerce(self.contract.field(name), read.text.column(name))
        micros = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = pc.or_kleene(pc.is_null(values), failed).to_numpy(zero_copy_only=False) | read.reason.is_valid() \
            .to_numpy(zero_copy_only=False)
        micros[bad] = np.nan
        out = np.full(len(records), np.nan)
        out[read.line - 1] = micros  # one record per line (``_one_line``), none blank
        return out

    def _land(self, records: list[bytes], event_us: np.ndarray, skipped: np.ndarray, usable: np.ndarray,
              name: str) -> list[tuple[str, str, bytes]]:
        """One landing file per partition of the records not ``skipped``; (partition, path, bytes). A
        record that decoded good without a usable event time (its contract lets it be empty) lands
        with the stream's current partition."""
        counted = usable & ~skipped
        current = self._current_partition(int(event_us[counted].max()) if counted.any() else int(time.time() * 1e6))
        days = np.where(usable, np.nan_to_num(event_us, nan=0) // 86_400_000_000, 0).astype(np.int64)
        partition_of_day = {d: partition_of_date(self.contract, (EPOCH + dt.timedelta(days=int(d))).isoformat())
                            for d in np.unique(days[counted])}
        by_partition: dict[str, list[bytes]] = {}
        for i in np.flatnonzero(~skipped):
            partition = partition_of_day[days[i]] if usable[i] else current
            by_partition.setdefault(partition, []).append(records[i])
        out = []
        for partition, lines in sorted(by_partition.items()):
            folder = lake.join(self.project.landing, self.source, lake.period_start(partition).isoformat())
            path = lake.join(folder, f"{STREAM_FILE_PREFIX}{name}.jsonl")
            data = b"\n".join(lines) + b"\n"
            put(path, data)
            out.append((partition, path, data))
            self.landed_partitions.add(partition)
            self.report.landed += len(lines)
        return out

    def _current_partition(self, newest_us: int) -> str:
        """Where the stream is: the watermark, or this batch's newest usable event time if later."""
        at = max(newest_us, self.state.watermark_us or newest_us)
        return partition_of_date(self.contract, dt.datetime.fromtimestamp(at / 1_000_000, dt.timezone.utc)
                                 .date().isoformat())

    def _decode(self, partition: str, path: str, data: bytes, now_us: int) -> pa.Table:
        day = lake.period_start(partition).isoformat()
        decoded = decode_files(self.contract, self.source, partition,
                               [(LandingFile(path, day, partition, len(data)), data)], now_us, self.run_id)
        self.report.good += decoded.good.num_rows
        self.report.quarantined += decoded.quarantine.num_rows
        self._count("good", decoded.good.num_rows)
        self._count("quarantined", decoded.quarantine.num_rows)
        return decoded.good

    def _too_late(self, entries: list[Entry], records: list[bytes], event_us: np.ndarray) -> pa.Table:
        rows = []
        for e, r, t in zip(entries, records, event_us):
            day = dt.datetime.fromtimestamp(t / 1_000_000, dt.timezone.utc).date().isoformat()
            rows.append(Q.records(self.source, partition_of_date(self.contract, day), f"{self.key}/{e.id}", [1],
                                  pa.array([R.TOO_LATE]), pa.array([self.contract.event_time]),
                                  pa.array([r], pa.large_binary()), self.run_id))
        self.report.too_late += len(entries)
        self._count("too_late", len(entries))
        return pa.concat_tables(rows)

    def _unplaceable(self, entries: list[Entry], records: list[bytes], now_us: int) -> tuple[pa.Table, np.ndarray]:
        """Records with no usable event time (not JSON, none, unparseable, in the future) belong to no
        partition: judged by the batch decode, quarantined with its reason here, so they count
        against no partition's threshold. Returns those rows and which records decoded good anyway
        (a contract whose event time may be empty): those land in the current partition."""
        partition = self._current_partition(int(time.time() * 1e6))
        data = b"\n".join(records) + b"\n"
        decoded = decode_files(self.contract, self.source, partition,
                               [(LandingFile(self.key, lake.period_start(partition).isoformat(), partition), data)],
                               now_us, self.run_id)
        q = decoded.quarantine
        lines = q.column("line").to_numpy()
        where = pa.array([f"{self.key}/{entries[line - 1].id}" for line in lines], pa.string())
        q = q.set_column(q.schema.get_field_index("file"), "file", where)
        q = q.set_column(q.schema.get_field_index("line"), "line", pa.array(np.ones(len(lines), dtype=np.int64)))
        q = q.cast(Q.SCHEMA)
        self.report.quarantined += q.num_rows
        self._count("quarantined", q.num_rows)
        good = np.zeros(len(records), dtype=bool)
        good[decoded.good.column("_line").to_numpy() - 1] = True
        return q, good

    def _write_quarantine(self, rows: pa.Table, name: str) -> None:
        import pyarrow.parquet as pq

        path = lake.join(stream_quarantine_dir(self.project.quarantine, self.source), f"{name}.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        put(path, sink.getvalue().to_pybytes())

    # -- the online store -------------------------------------------------------------------------

    def _lake_history(self) -> pa.Table | None:
        """The source's committed rows, ranked before anything the stream lands after."""
        from millrace.pipelines.features_build import source_rows

        table, _ = source_rows(self.project, self.source)
        key = self.contract.partitioning.key
        return None if table is None else self._provenance(table.drop_columns([key]), lake_rows=True)

    def _load_lookups(self) -> None:
        """The newest snapshot of each source a streaming view enriches from."""
        from millrace.pipelines.features_build import latest_snapshot

        read: dict = {}
        for name in self.views:
            enrich = self.features.view(name).enrich
            if enrich and enrich.source not in self.lookups:
                self.lookups[enrich.source] = latest_snapshot(self.project, enrich.source, read)[0]

    def _provenance(self, rows: pa.Table, lake_rows: bool = False) -> pa.Table:
        """The columns ``resolve_duplicates`` ranks by: stream rows after lake rows, in arrival order."""
        n = rows.num_rows
        start = 0 if lake_rows else self._rows_seen
        if not lake_rows:
            self._rows_seen += n
        rows = rows.append_column("_file", pa.array(np.full(n, 0 if lake_rows else 1, dtype=np.int32)))
        return rows.append_column("_line", pa.array(np.arange(start, start + n, dtype=np.int64)))

    def _update_online(self, rows: pa.Table) -> None:
        from millrace.features.compute import compute_view
        from millrace.features.materialize import latest_per_key, update_online
        from millrace.pipelines.write import resolve_duplicates

        parts = ([self.history] if self.history is not None else []) + self.buffer
        history = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        first_day = pc.min(rows.column(self.contract.event_time)).as_py().date()
        created = dt.datetime.now(dt.timezone.utc)
        for i, name in enumerate(self.views):
            view, keys = self.features.view(name), self.features.join_keys(name)
            keys = [keys] if isinstance(keys, str) else list(keys)
            events = history
            if all(k in rows.column_names for k in keys) and len(keys) == 1:  # only the touched entities
                events = history.filter(pc.is_in(history.column(keys[0]), pc.unique(rows.column(keys[0]))))
            events, _ = resolve_duplicates(self.contract, events)
            lookup = self.lookups.get(view.enrich.source) if view.enrich else None
            if view.enrich and lookup is None:
                if name not in self._skipped:
                    self._skipped.add(name)
                    self.say(f"online {name}: skipped until '{view.enrich.source}' has committed partitions "
                             f"(it enriches from them)")
                continue
            table = compute_view(view, self.features.join_keys(name), self.contract.event_time,
                                 events.drop_columns(list(PROVENANCE)), lookup, self.features.types[name], created,
                                 (first_day, None), derived=self.features.derived_columns(self.source))
            written = update_online(self.project, self.features, self.writer, name,
                                    latest_per_key(table, self.features.join_keys(name), None))
            self.report.online_written[name] = self.report.online_written.get(name, 0) + written
            if i == 0:
                checkpoint("stream_mid_online")

    # -- the lake ---------------------------------------------------------------------------------

    def _take_commit(self) -> "CommitWork":
        """What the next lake commit covers: every batch landed so far."""
        work = CommitWork(frozenset(self.landed_partitions), tuple(self.to_ack), self.state.landed_until,
                          len(self.buffer))
        self.landed_partitions, self.to_ack = set(), []
        return work

    def _commit_lake(self, work: "CommitWork") -> "CommitDone":
        """Commit the partitions the stream landed (at start: every partition with stream files),
        then acknowledge the entries. Runs in the commit thread: it reads the landing and the lake
        and writes the lake, nothing the consumer loop changes; ``_committed`` applies the result.
        Another writer of the source (a nightly's ingest) holding its lock defers the commit to the
        next interval; its ingest commits the same files."""
        from millrace.pipelines.ingest import new_run_id
        from millrace.pipelines.write import Locations, write_partitions

        done = CommitDone(work)
        startup = work.partitions is None
        try:
            with source_lock(self.project.state_dir, self.source, command=f"millrace stream --source {self.source}"):
                commit.prepare(self.project.lake, self.project.quarantine, self.source, self.contract)
                files = self._files_to_commit(work) if work.partitions or startup else []
                if files:
                    where = Locations(self.project.lake, self.project.quarantine, self.project.state_dir)
                    reports = write_partitions(self.contract, self.source, self._decode_partitions(files), where,
                                               new_run_id(), self._expectations())
                    for r in reports:
                        if r.status != "committed":
                            self.say(f"{self.source} {r.key}={r.partition}: not committed: {r.problem}")
                        else:
                            done.committed.append(r.partition)
                    checkpoint("stream_after_lake_commit")
                    done.history = self._lake_history()
        except SourceBusy as busy:
            if startup:
                raise
            done.deferred = str(busy)  # a batch ingest is writing the source: acknowledge after the next commit
            return done
        for start in range(0, len(work.ack), ACK_CHUNK):
            self.client.xack(self.key, self.config.group, *work.ack[start:start + ACK_CHUNK])
        return done

    def _files_to_commit(self, work: "CommitWork") -> list[LandingFile]:
        """The landing files of the work's partitions, without the stream's files of batches landed
        after it was taken (the next commit's)."""
        if not lake.exists(lake.join(self.project.landing, self.source)):
            return []
        from millrace.pipelines.ingest import plan

        chosen = plan(self.project, self.source, partitions=work.partitions)
        if chosen.problems:
            raise LandingInvalid(chosen.problems)
        until = id_key(work.landed_until)
        streamed = [f for f in chosen.files if is_stream_file(f.path)]
        later = {f.path for f in streamed if id_key(last_entry(f.path)) > until}
        files = [f for f in chosen.files if f.path not in later]
        if work.partitions is None:  # at start, only partitions the stream landed in: batch files are the nightly's
            partitions = {f.partition for f in streamed}
            files = [f for f in files if f.partition in partitions]
        return files

    def _committed(self, done: "CommitDone") -> None:
        """In the consumer loop: what a lake commit did. Its rows are the lake's now, so the
        buffered batches it covered leave the buffer; a deferred commit's work waits for the next."""
        work = done.work
        if done.deferred:
            self.report.commits_deferred += 1
            self.say(f"{self.source}: lake commit deferred: {done.deferred}")
            self.landed_partitions |= work.partitions
            self.to_ack = list(work.ack) + self.to_ack
            return
        if done.history is not None:
            self.history, self.buffer = done.history, self.buffer[work.buffered:]
            self.report.lake_commits += 1
            self._count("lake_commits", 1)
        self.report.partitions.update(done.committed)
        self.report.acknowledged += len(work.ack)
        self._count("acknowledged", len(work.ack))
        if done.committed:  # a long-running consumer's progress, one line per commit
            self.say(f"{self.source}: lake commit of {len(done.committed)} partition(s); {self.report.entries:,} "
                     f"entries read, {self.report.acknowledged:,} acknowledged so far")

    def _decode_partitions(self, files: list[LandingFile]) -> list[tuple[str, list]]:
        """Every landing file of each partition, decoded together as the batch ingest does."""
        groups: dict[str, list[LandingFile]] = {}
        for f in files:
            groups.setdefault(f.partition, []).append(f)
        now_us = int(time.time() * 1_000_000)
        run_id = self.run_id
        return [(partition, [decode_files(self.contract, self.source, partition,
                                          [(f, lake.read_bytes(f.path)) for f in sorted(group, key=lambda f: f.path)],
                                          now_us, run_id)])
                for partition, group in sorted(groups.items())]

    def _expectations(self):
        if not self.config.expectations:
            return None
        if self._suite is None:
            from millrace.validation.expectations import SuiteRunner

            self._suite = SuiteRunner(self.contract)
        return self._suite

    def _lag(self) -> int | None:
        try:
            for group in self.client.xinfo_groups(self.key):
                if _text(group.get("name")) == self.config.group:
                    return group.get("lag")
        except Exception:  # an old Redis without lag: the report says nothing rather than fail
            return None
        return None

    def _count(self, outcome: str, n: int) -> None:
        if self.metrics and n:
            self.metrics.entries.labels(self.source, outcome).inc(n)


def _one_line(record: bytes) -> bytes:
    """An entry's record as one JSON-lines line (JSON allows line breaks only as whitespace)."""
    record = record.replace(b"\r", b" ").replace(b"\n", b" ")
    return record if record.strip() else b"{}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Metrics:
    """Prometheus metrics of a stream job (``--metrics-port``)."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry or REGISTRY
        self.entries = Counter("millrace_stream_entries", "Stream entries by outcome (read, good, quarantined, "
                               "too_late, acknowledged) and lake commits", ["source", "outcome"], registry=registry)
        self.freshness = Histogram("millrace_stream_freshness_seconds", "Entry produced -> its features online",
                                   ["source"], registry=registry,
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT finish the current micro-batch, commit and acknowledge, then exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
