"""``millrace stream produce``: replay a source's landed records into its Redis stream, at a rate.

Each entry holds one record, spelled as in the source's JSON-lines landing files (field ``record``:
a JSON object of the contract's fields, values as their landing text), and when it was produced
(``produced_at``, Unix seconds, from which a consumer measures freshness). The records are those of
the source's landing zone (the bundled example's after ``millrace example land``), file by file in
landing order, so event times go forward as in the batch data, with its planted bad records.

``late_share`` of the records are held back and sent after all the others: their event times are
then behind the stream's by far more than a streaming job's allowed lateness, the case it must
quarantine (``late_event``) rather than drop. ``bad_share`` of the entries are cut short (not
JSON: ``malformed_record`` downstream). Both draws are seeded, so a replay is repeatable.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from millrace.contracts.project import Project
from millrace.pipelines import landing, lake
from millrace.pipelines.errors import PipelineError
from millrace.pipelines.readers import read_records, strip_terminator

PIPELINE_ENTRIES = 500    # XADDs sent in one round trip at most
TICK_SECONDS = 0.02       # how often the pacing catches up with the rate


@dataclass(frozen=True)
class ProduceReport:
    source: str
    stream: str
    entries: int           # sent in all
    late: int              # of them, held back and sent last
    bad: int               # of them, cut short on purpose
    seconds: float

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0


def landed_records(project: Project, source: str) -> Iterator[bytes]:
    """The source's landed records as JSON objects, file by file (a record the batch reader cannot
    read at all, such as a line of broken UTF-8, is sent as its raw bytes)."""
    contract = project.contract(source)
    files = landing.scan(project.landing, source, contract).files
    if not files:
        raise PipelineError(f"no landing files for '{source}' under {project.landing} (fix: land some, e.g. "
                            f"`millrace example land`)")
    for f in files:
        records = read_records(f.path, lake.read_bytes(f.path), contract.field_names, contract.landing)
        broken = records.reason.is_valid().to_numpy(zero_copy_only=False)
        texts = records.text.to_pylist()
        for i, row in enumerate(texts):
            if broken[i]:
                yield strip_terminator(records.raw.take([i])[0].as_py())
            else:
                yield json.dumps({k: v for k, v in row.items() if v is not None}, separators=(",", ":")).encode()


def produce(project: Project, source: str, rate: float, late_share: float = 0.0, bad_share: float = 0.0,
            limit: int | None = None, seed: int = 7, client=None, progress=lambda sent: None) -> ProduceReport:
    """Send the records (at most ``limit``) at ``rate`` entries per second."""
    if rate <= 0:
        raise PipelineError(f"--rate {rate}: must be above 0 (entries per second)")
    for name, share in (("--late-share", late_share), ("--bad-share", bad_share)):
        if not 0.0 <= share < 1.0:
            raise PipelineError(f"{name} {share}: must be at least 0 and below 1")
    stream = project.stream_key(source)
    if client is None:
        from millrace.pipelines.stream_client import connect

        client = connect(project, source)
    rng = np.random.default_rng(seed)
    on_time, held = [], []
    for record in landed_records(project, source):
        if limit is not None and len(on_time) + len(held) >= limit:
            break
        (held if rng.random() < late_share else on_time).append(record)
    bad = 0
    started = time.perf_counter()
    sent = 0
    for chunk in _paced(on_time + held, rate, started):
        with client.pipeline(transaction=False) as pipe:
            now = f"{time.time():.6f}"
            for record in chunk:
                if bad_share and rng.random() < bad_share:
                    record, bad = record[: max(1, len(record) // 2)], bad + 1
                pipe.xadd(stream, {"record": record, "produced_at": now})
            pipe.execute()
        sent += len(chunk)
        progress(sent)
    return ProduceReport(source=source, stream=stream, entries=sent, late=len(held), bad=bad,
                         seconds=time.perf_counter() - started)


def _paced(records: list[bytes], rate: float, started: float) -> Iterator[list[bytes]]:
    """The records in chunks, each given when the rate allows it."""
    sent = 0
    while sent < len(records):
        due = min(len(records), int((time.perf_counter() - started) * rate) + 1)
        if due <= sent:
            time.sleep(min(TICK_SECONDS, (sent + 1 - due) / rate))
            continue
        due = min(due, sent + PIPELINE_ENTRIES)
        yield records[sent:due]
        sent = due
