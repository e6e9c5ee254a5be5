"""Named crash points for testing that a run can be killed anywhere and rerun safely.

``MILLRACE_KILL_AT=<point>[:<n>]`` makes the process SIGKILL itself the n-th time (default 1st)
it passes ``<point>``. Unset (always, outside tests), ``checkpoint`` is a dictionary lookup.
It lives in the bottom layer so every stage (ingest, feature builds, materialization, training)
can name its crash points; the kill tests of each package use them.
"""
from __future__ import annotations

import os
import signal

INGEST_POINTS = (
    "after_decode",            # a landing file decoded, nothing written yet
    "after_data_files",        # a partition's Parquet data staged, no quarantine, no manifest
    "after_quarantine",        # a partition's data and quarantine staged, no results, no manifest
    "before_commit",           # every partition staged, nothing committed (pipelines.commit)
    "after_quarantine_commit", # the quarantine table holds the run's files, the lake does not
    "after_commit",            # the lake table committed, replaced files not yet cleaned up
    "after_cleanup",           # committed and cleaned up, the run's reports not yet final
)
FEATURE_POINTS = (             # feature builds and materialization (features/)
    "after_view_data",         # a view's new offline data written, not yet committed
    "after_view_commit",       # a view committed, the build record not yet written
    "mid_materialize",         # some entities written to the online store, the record not updated
)
TRAINING_POINTS = (            # training (training/)
    "after_run_start",         # an MLflow run is RUNNING, nothing registered
    "after_register",          # a model version registered, no alias moved
    "after_alias_move",        # champion moved, its alias log entry not yet written
)
NIGHTLY_POINTS = (             # the nightly chain (pipelines/nightly.py)
    "before_training",         # features rebuilt and materialized, models not yet trained
)
RELEASE_POINTS = (             # releases (indexing/release.py)
    "after_release_written",   # a release folder complete under its id, the pointer not yet moved
    "after_pointer_swap",      # the pointer moved, its log line written
)
STREAM_POINTS = (              # the streaming consumer (pipelines/stream.py)
    "stream_mid_batch",        # a micro-batch read from the stream (inside a window), nothing landed
    "stream_after_landing",    # its landing files in place, the stream's state not yet updated
    "stream_mid_online",       # some of its views written to the online store, not all
    "stream_after_lake_commit",  # the lake committed what the stream landed, the entries not yet acknowledged
)
POINTS = INGEST_POINTS + FEATURE_POINTS + TRAINING_POINTS + NIGHTLY_POINTS + RELEASE_POINTS + STREAM_POINTS
_seen: dict[str, int] = {}


def checkpoint(point: str) -> None:
    target = os.environ.get("MILLRACE_KILL_AT")
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
