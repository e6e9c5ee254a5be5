"""Named crash points for testing that a run can be killed anywhere and rerun safely.

``MILLRACE_KILL_AT=<point>[:<n>]`` makes the process SIGKILL itself the n-th time (default 1st)
it passes ``<point>``. Unset (always, outside tests), ``checkpoint`` is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = (
    "after_decode",            # a landing file decoded, nothing written yet
    "after_data_files",        # a partition's Parquet data written, no quarantine, no manifest
    "after_quarantine",        # data and quarantine written, no results, no manifest
    "before_manifest",         # everything written but the manifest
    "after_manifest",          # manifest renamed (committed), old files not yet cleaned up
    "after_first_partition",   # one partition fully done, others not
)
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
