"""Fixtures of the feature tests."""
from __future__ import annotations

import pytest

from tests.features.typed_state import redis_db_url, redis_or_skip, typed_state


@pytest.fixture
def typed_redis(tmp_path, monkeypatch):
    """The typed project materialized into the test Redis, with a client on it; skips (fails under CI)
    when Redis is down. Only this project's keys are deleted afterwards: the test Redis is shared."""
    from tests.conftest import REDIS_URL

    url = redis_db_url(REDIS_URL)
    client = redis_or_skip(url)
    made = []
    try:
        made.append(typed_state(tmp_path, monkeypatch, MILLRACE_ONLINE_STORE=url))
        yield (*made[0], client)
    finally:
        for project, _, _ in made:
            keys = list(client.scan_iter(match=b"*" + project.name.encode(), count=1000))
            if keys:
                client.delete(*keys)
        client.close()
