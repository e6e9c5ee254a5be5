"""Event-time windows with allowed lateness, on Beam's TestStream: rows of a window that has not
fired come in its on-time pane, rows behind the watermark but within the lateness in a late pane,
rows of a closed window leave on the too-late output (to quarantine). The micro-batch consumer's
rule (``Windows.classify``) must say the same for the same watermark."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from millrace.pipelines.windows import LATE, ON_TIME, TOO_LATE, EventTimeWindows, Windows

W = Windows.of_seconds(60, 30)  # one-minute windows, 30 s of allowed lateness


_PANES: list[tuple[int, list[str]]] = []   # module level: the runner's copies of the steps append here
_TOO_LATE: list[str] = []


def _pane(kv, pane=beam.DoFn.PaneInfoParam):
    _PANES.append((pane.timing, sorted(kv[1])))


def _too_late(row):
    _TOO_LATE.append(row)


def _run(stream: TestStream) -> tuple[dict[str, list[str]], list[str]]:
    """(pane timing -> rows, too-late rows) of the stream through EventTimeWindows."""
    _PANES.clear()
    _TOO_LATE.clear()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        windowed, late = p | stream | EventTimeWindows(W)
        windowed | beam.Map(lambda v: ("k", v)) | beam.GroupByKey() | beam.Map(_pane)
        late | beam.Map(_too_late)
    out: dict[str, list[str]] = {}
    names = {0: "early", 1: ON_TIME, 2: LATE}
    for timing, rows in _PANES:
        out.setdefault(names[timing], []).extend(rows)
    return out, sorted(_TOO_LATE)


def test_on_time_late_within_lateness_and_too_late_rows():
    """The watermark is the newest event time seen (the source moves the runner's to it)."""
    stream = (TestStream()
              .add_elements([TimestampedValue("a@10", 10), TimestampedValue("b@20", 20)])
              .advance_watermark_to(20)
              .add_elements([TimestampedValue("x@70", 70)])
              .advance_watermark_to(70)                       # window [0, 60) fires on time
              .add_elements([TimestampedValue("c@30", 30)])   # behind it, within 30 s of lateness
              .add_elements([TimestampedValue("y@95", 95)])
              .advance_watermark_to(95)
              .add_elements([TimestampedValue("d@40", 40),    # window [0, 60) closed at 60 + 30
                             TimestampedValue("e@80", 80)])   # window [60, 120) still open
              .advance_watermark_to_infinity())
    panes, too_late = _run(stream)
    assert sorted(panes[ON_TIME]) == ["a@10", "b@20", "e@80", "x@70", "y@95"]
    assert panes[LATE] == ["c@30"]
    assert too_late == ["d@40"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_consumers_rule_agrees_with_beam_on_random_streams(seed):
    """Rows in batches, the TestStream's watermark moved to the newest event time after each: the
    rows the consumer's rule calls too late are those Beam's transform splits off; of the others,
    those whose window ended before the batch came are in late panes, the rest on time."""
    rng = np.random.default_rng(seed)
    watermark, expected = None, {ON_TIME: [], LATE: [], TOO_LATE: []}
    stream = TestStream()
    clock = 0
    for batch in range(8):
        clock += int(rng.integers(20, 80))
        times = np.maximum(0, clock - rng.integers(0, 150, size=5)).astype(np.int64)
        names = [f"r{batch}.{i}@{t}" for i, t in enumerate(times)]
        verdicts, after = W.classify(times * 1_000_000, watermark)
        for name, verdict, end in zip(names, verdicts, W.end_of(times * 1_000_000)):
            if verdict == TOO_LATE:
                expected[TOO_LATE].append(name)
            else:  # Beam's panes go by the runner's watermark, moved between batches only
                expected[LATE if watermark is not None and end <= watermark else ON_TIME].append(name)
        stream = stream.add_elements([TimestampedValue(n, int(t)) for n, t in zip(names, times)])
        if after != watermark:  # TestStream's watermark must strictly advance
            watermark = after
            stream = stream.advance_watermark_to(watermark / 1_000_000)
    panes, too_late = _run(stream.advance_watermark_to_infinity())
    assert sorted(panes.get(ON_TIME, [])) == sorted(expected[ON_TIME])
    assert sorted(panes.get(LATE, [])) == sorted(expected[LATE])
    assert too_late == sorted(expected[TOO_LATE])
    assert expected[TOO_LATE] and expected[LATE]  # the seeds exercise every case


def test_each_row_is_judged_against_the_rows_before_it():
    t = np.array([0, 59, 60, 119], dtype=np.int64) * 1_000_000
    assert list(W.classify(t, None)[0]) == [ON_TIME] * 4
    assert list(W.classify(t, 60 * 1_000_000)[0]) == [LATE, LATE, ON_TIME, ON_TIME]
    assert list(W.classify(t, 90 * 1_000_000)[0]) == [TOO_LATE, TOO_LATE, ON_TIME, ON_TIME]
    # a row far ahead closes the windows of the rows after it, not of those before
    ahead = np.array([10, 500, 20], dtype=np.int64) * 1_000_000
    verdicts, after = W.classify(ahead, None)
    assert list(verdicts) == [ON_TIME, ON_TIME, TOO_LATE] and after == 500 * 1_000_000
    # a row that does not advance the watermark (e.g. a future event time) moves nothing
    verdicts, after = W.classify(ahead, None, advances=np.array([True, False, True]))
    assert list(verdicts) == [ON_TIME, ON_TIME, ON_TIME] and after == 20 * 1_000_000
