"""The Redis holding the sources' streams, for the consumer and the producer alike (light: no
Beam, no Arrow, so ``millrace stream produce`` starts fast)."""
from __future__ import annotations

from millrace.contracts.project import Project
from millrace.pipelines.errors import PipelineError, StreamUnavailable


def connect(project: Project, source: str):
    """A client of the streams' Redis, checked reachable (an unreachable one is refused with where
    its URL comes from; the password is never shown) and holding no other kind of value at the
    source's stream key."""
    from urllib.parse import urlparse

    import redis

    from millrace.features.stores import redis_client

    url = project.stream_redis
    client = redis_client(url)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        parsed = urlparse(url)
        shown = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 6379}{parsed.path}"
        raise StreamUnavailable(f"cannot reach the streams' Redis at {shown} (streaming.redis in millrace.yaml, "
                                f"or MILLRACE_STREAM_REDIS): {exc}") from exc
    key = project.stream_key(source)
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind not in ("stream", "none"):
        raise PipelineError(f"Redis key '{key}' holds a {kind}, not a stream (fix: point streaming.prefix in "
                            f"millrace.yaml at keys of millrace's own, or delete that key)")
    return client
