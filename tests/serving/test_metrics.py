"""The server's Prometheus metrics: each one in the exposition text with its labels and values, in
a registry per server; the release info names only the current release; fixed label sets refuse
a stray value; the side port answers GET /metrics and refuses a port in use."""
from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace.serving.errors import ServingError
from millrace.serving.metrics import FALLBACKS, Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.text()) for s in family.samples}


def _value(metrics: Metrics, name: str, **labels) -> float | None:
    return _samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_requests_and_their_latency_by_model_version_and_status():
    m = Metrics()
    m.request("will_like", "3", "OK", 0.0004)
    m.request("will_like", "3", "OK", 0.2)
    m.request("will_like", "3", "INVALID_ARGUMENT", 0.00005)
    m.request("recommender", "1", "OK", 7.0)
    p = "millrace_serving_request"
    assert _value(m, "millrace_serving_requests_total", model="will_like", version="3", status="OK") == 2
    assert _value(m, "millrace_serving_requests_total", model="will_like", version="3", status="INVALID_ARGUMENT") == 1
    assert _value(m, f"{p}_seconds_count", model="will_like", version="3") == 3
    assert _value(m, f"{p}_seconds_sum", model="will_like", version="3") == pytest.approx(0.20045)
    assert _value(m, f"{p}_seconds_bucket", model="will_like", version="3", le="0.0001") == 1
    assert _value(m, f"{p}_seconds_bucket", model="will_like", version="3", le="0.0005") == 2
    assert _value(m, f"{p}_seconds_bucket", model="will_like", version="3", le="5.0") == 3
    assert _value(m, f"{p}_seconds_bucket", model="recommender", version="1", le="5.0") == 0
    assert _value(m, f"{p}_seconds_bucket", model="recommender", version="1", le="+Inf") == 1


def test_batches_queue_stages_loads_reloads_and_denials():
    m = Metrics()
    for size in (1, 3, 256, 300):
        m.batch("will_like", size)
    m.queue_depth("will_like", 7)
    m.queue_depth("will_like", 2)
    m.stage("search", 0.003)
    m.model_loaded("retrieval.user_encoder", "2", 1.25)
    m.reload("swapped")
    m.reload("refused")
    m.reload("refused")
    m.denied("/inference.GRPCInferenceService/ModelInfer")
    batch = "millrace_serving_batch_size_bucket"
    assert [_value(m, batch, model="will_like", le=le) for le in ("1.0", "2.0", "4.0", "128.0", "256.0", "+Inf")] == \
        [1, 1, 2, 2, 3, 4]
    assert _value(m, "millrace_serving_queue_depth", model="will_like") == 2
    assert _value(m, "millrace_serving_stage_seconds_count", stage="search") == 1
    assert _value(m, "millrace_serving_stage_seconds_bucket", stage="search", le="0.0025") == 0
    assert _value(m, "millrace_serving_stage_seconds_bucket", stage="search", le="0.005") == 1
    assert _value(m, "millrace_serving_model_load_seconds", model="retrieval.user_encoder", version="2") == 1.25
    assert _value(m, "millrace_serving_reloads_total", outcome="swapped") == 1
    assert _value(m, "millrace_serving_reloads_total", outcome="refused") == 2
    assert _value(m, "millrace_serving_denied_total", method="/inference.GRPCInferenceService/ModelInfer") == 1


def test_every_fallback_reason_is_counted_from_zero():
    m = Metrics()
    counts = {r: _value(m, "millrace_serving_fallbacks_total", reason=r) for r in FALLBACKS}
    assert counts == dict.fromkeys(FALLBACKS, 0)
    m.fallback("ranker_late")
    m.fallback("ranker_late")
    m.fallback("unknown_user")
    assert _value(m, "millrace_serving_fallbacks_total", reason="ranker_late") == 2
    assert _value(m, "millrace_serving_fallbacks_total", reason="unknown_user") == 1
    assert _value(m, "millrace_serving_fallbacks_total", reason="online_store_down") == 0


def test_a_value_outside_a_fixed_label_set_is_refused():
    m = Metrics()
    for call in (lambda: m.fallback("ranker_down"), lambda: m.stage("decode", 0.1), lambda: m.reload("done"),
                 lambda: m.request("will_like", "3", "ok", 0.1)):
        with pytest.raises(ValueError):
            call()
    assert "ranker_down" not in m.text() and "decode" not in m.text()


def test_the_release_info_names_only_the_current_release():
    m = Metrics()
    assert "millrace_serving_release_info" not in m.text()  # no release named yet: no sample at all
    m.release("20261202T010203")
    m.release("20261202T040506")
    releases = [dict(labels)["release"] for (name, labels), value in _samples(m).items()
                if name == "millrace_serving_release_info" and value == 1]
    assert releases == ["20261202T040506"]
    assert "20261202T010203" not in m.text()


def test_each_server_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.request("will_like", "3", "OK", 0.01)
    assert _value(a, "millrace_serving_requests_total", model="will_like", version="3", status="OK") == 1
    assert _value(b, "millrace_serving_requests_total", model="will_like", version="3", status="OK") is None


def test_the_side_port_serves_the_text_and_refuses_a_port_in_use():
    m = Metrics()
    m.request("will_like", "3", "OK", 0.01)
    port = m.serve("127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            body = reply.read().decode()
        assert 'millrace_serving_requests_total{model="will_like",status="OK",version="3"} 1.0' in body
        with pytest.raises(ServingError) as caught:
            Metrics().serve("127.0.0.1", port)
        assert f"127.0.0.1:{port}" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        m.stop()
    with socket.socket() as probe:  # stopped: nothing listens there any more (Linux refuses this bind while one does)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    m.stop()  # a second stop is harmless
