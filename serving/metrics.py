"""The server's Prometheus metrics, in a registry of its own (several servers may share one
process, as in tests), exposed on a side HTTP port.

Label values come from fixed sets (grpc status names, the named fallbacks, the recommender's
stages, reload outcomes) or from what the server itself serves (model names, versions, methods),
never from a caller's free text, so the number of series stays bounded. A value outside a fixed
set is a programming error and raises ``ValueError`` at once.
"""
from __future__ import annotations

import threading

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import InfoMetricFamily

from millrace.serving.errors import ServingError

PREFIX = "millrace_serving"
STATUSES = frozenset(code.name for code in grpc.StatusCode)
FALLBACKS = ("unknown_user", "ranker_late", "ranker_failed", "ranker_overloaded", "online_store_down")
STAGES = ("features", "encoder", "search", "ranking")
RELOAD_OUTCOMES = ("swapped", "refused")
# 0.1 ms .. 5 s: a cached lookup at the bottom, a cold composite request at the top.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = tuple(float(2 ** i) for i in range(9))  # 1, 2, 4, ..., 256


class _Release:
    """``millrace_serving_release_info{release}``: the current release only, replaced in one step
    (a scrape never sees two releases, nor none once one was named)."""

    def __init__(self) -> None:
        self.current: str | None = None

    def collect(self):
        current = self.current
        if current is not None:
            yield InfoMetricFamily(f"{PREFIX}_release", "The release being served.", value={"release": current})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(f"{PREFIX}_requests", "Requests answered, by model, version and gRPC status.",
                                 ("model", "version", "status"), registry=r)
        self._request_seconds = Histogram(f"{PREFIX}_request_seconds", "Time to answer a request.",
                                          ("model", "version"), buckets=LATENCY_BUCKETS, registry=r)
        self._batch = Histogram(f"{PREFIX}_batch_size", "Rows in each batch the dynamic batcher ran.",
                                ("model",), buckets=BATCH_BUCKETS, registry=r)
        self._queue = Gauge(f"{PREFIX}_queue_depth", "Requests waiting in the batcher's queue.", ("model",), registry=r)
        self._fallbacks = Counter(f"{PREFIX}_fallbacks", "Recommender answers on a degraded path, by reason.",
                                  ("reason",), registry=r)
        self._stages = Histogram(f"{PREFIX}_stage_seconds", "Time of each recommender stage.", ("stage",),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self._load = Gauge(f"{PREFIX}_model_load_seconds", "Seconds it took to load a model version.",
                           ("model", "version"), registry=r)
        self._reloads = Counter(f"{PREFIX}_reloads", "Hot reloads of the release, by outcome.", ("outcome",),
                                registry=r)
        self._denied = Counter(f"{PREFIX}_denied", "Calls refused for a missing or invalid bearer token, by method.",
                               ("method",), registry=r)
        self._release = _Release()
        r.register(self._release)
        # Series that exist from the start, at 0, so that a rate over them is defined before the first event.
        for reason in FALLBACKS:
            self._fallbacks.labels(reason)
        for outcome in RELOAD_OUTCOMES:
            self._reloads.labels(outcome)
        self._http = None
        self._thread: threading.Thread | None = None

    def request(self, model: str, version: str, status: str, seconds: float) -> None:
        """One answered request; ``status``: a grpc.StatusCode name ("OK", "INVALID_ARGUMENT", ...)."""
        self._requests.labels(model, version, _one_of(status, STATUSES, "status")).inc()
        self._request_seconds.labels(model, version).observe(seconds)

    def batch(self, model: str, size: int) -> None:
        self._batch.labels(model).observe(size)

    def queue_depth(self, model: str, depth: int) -> None:
        self._queue.labels(model).set(depth)

    def fallback(self, reason: str) -> None:
        self._fallbacks.labels(_one_of(reason, FALLBACKS, "fallback reason")).inc()

    def stage(self, stage: str, seconds: float) -> None:
        self._stages.labels(_one_of(stage, STAGES, "stage")).observe(seconds)

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        self._load.labels(model, version).set(seconds)

    def release(self, release_id: str) -> None:
        self._release.current = release_id

    def reload(self, outcome: str) -> None:
        self._reloads.labels(_one_of(outcome, RELOAD_OUTCOMES, "reload outcome")).inc()

    def denied(self, method: str) -> None:
        self._denied.labels(method).inc()

    def serve(self, host: str, port: int) -> int:
        """Expose the metrics over HTTP on ``host:port`` (0: any free port) from a daemon thread; the bound port."""
        from prometheus_client import start_http_server

        if self._http is not None:
            raise ServingError(f"metrics are already served on port {self._http.server_port} (fix: call serve once)")
        try:
            # prometheus_client >= 0.20 returns the server and its thread (older ones returned None).
            self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ServingError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}) "
                               "(fix: choose a free port, or 0 for any)") from None
        return self._http.server_port

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def stop(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)
        self._http = self._thread = None


def _one_of(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (one of {sorted(allowed)})")
    return value
