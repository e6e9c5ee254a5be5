"""The Redis holding the sources' streams, for the consumer and the producer alike (light: no
Beam, no Arrow, so ``millrace stream produce`` starts fast)."""
from __future__ import annotations

from millrace.contracts.project import Project
from millrace.pipelines.errors import StreamUnavailable


def connect(project: Project):
    """A client of the streams' Redis, checked reachable (an unreachable one is refused with where
    its URL comes from; the password is never shown)."""
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
    return client
