"""Fixed event-time windows with allowed lateness: which stream rows still count.

A row belongs to the window ``[start, start + size)`` holding its event time. The watermark is the
newest usable event time the stream has seen (a bounded-out-of-orderness watermark, row by row);
a window closes when the watermark reaches its end plus the allowed lateness, as Beam's windowing
drops an element whose window's end plus the allowed lateness is behind the watermark. A row of a
closed window is *too late*: it is quarantined (``too_late``), never dropped. A row of an open
window whose end the watermark has passed is *late* (Beam's late pane): it still counts, and its
partition is committed again.

``Windows.classify`` is what the micro-batch consumer calls (``pipelines.stream``);
``EventTimeWindows`` is the same rule as Beam transforms for a streaming runner: too-late rows are
split off before the windowing (which would drop them), the rest fire on time and in late panes.
Both are checked against each other on a TestStream (tests/pipelines/test_windows.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import trigger
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import FixedWindows

ON_TIME, LATE, TOO_LATE = "on_time", "late", "too_late"
TOO_LATE_TAG = "too_late"


@dataclass(frozen=True)
class Windows:
    size_us: int
    lateness_us: int

    @classmethod
    def of_seconds(cls, size: int, lateness: int) -> "Windows":
        return cls(size * 1_000_000, lateness * 1_000_000)

    def end_of(self, event_us: np.ndarray) -> np.ndarray:
        return (event_us // self.size_us + 1) * self.size_us

    def classify(self, event_us: np.ndarray, watermark_us: int | None,
                 advances: np.ndarray | None = None) -> tuple[np.ndarray, int | None]:
        """ON_TIME, LATE or TOO_LATE per row, in arrival order: each row against the watermark
        before it (the newest event time of the rows before it that ``advances``, default all);
        and the watermark after the last. Row by row, so how entries are cut into micro-batches
        changes nothing (a replay after a restart decides the same)."""
        n = len(event_us)
        out = np.full(n, ON_TIME, dtype=object)
        if not n:
            return out, watermark_us
        floor = np.iinfo(np.int64).min
        moves = np.where(advances if advances is not None else np.ones(n, dtype=bool), event_us, floor)
        running = np.maximum.accumulate(moves)
        before = np.concatenate([[floor if watermark_us is None else watermark_us],
                                 np.maximum(running[:-1], floor if watermark_us is None else watermark_us)])
        known = before != floor
        end = self.end_of(event_us)
        out[known & (end <= before)] = LATE
        out[known & (end + self.lateness_us <= before)] = TOO_LATE
        after = int(max(running[-1], floor if watermark_us is None else watermark_us))
        return out, (None if after == floor else after)


# -- the same rule for a streaming runner ----------------------------------------------------------

class _RouteTooLate(beam.DoFn):
    """One key: the watermark is the newest event time seen (kept in state), each row judged
    against it before it moves it, as ``Windows.classify`` does; rows of closed windows leave on
    the ``too_late`` output instead of being dropped by the grouping after."""

    SEEN = ReadModifyWriteStateSpec("newest_us", VarIntCoder())

    def __init__(self, windows: Windows):
        self.windows = windows

    def process(self, element, seen=beam.DoFn.StateParam(SEEN), timestamp=beam.DoFn.TimestampParam):
        _, value = element
        event_us = int(timestamp.micros)
        newest = seen.read()
        verdicts, after = self.windows.classify(np.array([event_us], dtype=np.int64), newest)
        seen.write(after)
        if verdicts[0] == TOO_LATE:
            yield beam.pvalue.TaggedOutput(TOO_LATE_TAG, value)
        else:
            yield beam.window.TimestampedValue(value, timestamp)


class EventTimeWindows(beam.PTransform):
    """Timestamped rows -> (rows windowed in fixed windows that fire on time and again for each
    late row within the lateness, too-late rows). The caller quarantines the second output."""

    def __init__(self, windows: Windows):
        super().__init__()
        self.windows = windows

    def expand(self, rows):
        size = self.windows.size_us
        routed = (rows
                  | "OneKey" >> beam.Map(lambda v: (0, v)).with_output_types(beam.typehints.KV[int, beam.typehints.Any])
                  | "RouteTooLate" >> beam.ParDo(_RouteTooLate(self.windows)).with_outputs(TOO_LATE_TAG, main="rows"))
        windowed = routed.rows | "Fixed" >> beam.WindowInto(
            FixedWindows(size / 1_000_000), trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            allowed_lateness=self.windows.lateness_us / 1_000_000,
            accumulation_mode=trigger.AccumulationMode.DISCARDING)
        return windowed, routed[TOO_LATE_TAG]
