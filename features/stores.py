"""Where a project's Feast repository and online store live. Light: no Feast, no Beam.

The Feast repository (``feature_store.yaml``, ``repo.py``, registry) and the SQLite online store
sit under ``<state>/feast``; a Redis online store is named by a ``redis://`` URL. Both the writer
(``feast_repo``, ``materialize``) and the serving-tier reader (``online``) take their locations
from here, so they cannot disagree.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

from millrace.contracts.project import Project
from millrace.features.errors import StoreUnavailable

SQLITE, REDIS = "sqlite", "redis"


def repo_dir(project: Project) -> str:
    return os.path.join(project.state_dir, "feast")


def sqlite_path(project: Project) -> str:
    return os.path.join(repo_dir(project), "online.db")


def online_kind(project: Project) -> str:
    """'sqlite' or 'redis' (a Redis URL that does not parse is refused with the fix)."""
    if project.online_store == SQLITE:
        return SQLITE
    if urlparse(project.online_store).scheme not in ("redis", "rediss"):
        raise StoreUnavailable(f"online_store '{project.online_store}' is neither 'sqlite' nor a redis:// URL "
                               f"(fix: set feature_store.online_store or MILLRACE_ONLINE_STORE)")
    return REDIS


def redis_connection_string(url: str) -> str:
    """redis://host:port/db -> Feast's "host:port,db=N"."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise StoreUnavailable(f"online_store '{url}' is neither 'sqlite' nor a redis:// URL "
                               f"(fix: set feature_store.online_store or MILLRACE_ONLINE_STORE)")
    db = (parsed.path or "/0").strip("/") or "0"
    extra = ",ssl=true" if parsed.scheme == "rediss" else ""
    password = f",password={parsed.password}" if parsed.password else ""
    return f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379},db={db}{password}{extra}"


def redis_client(url: str, timeout: float = 5.0):
    """A redis-py client on the same host, port, db, password and TLS as Feast's connection string."""
    import redis

    parsed = urlparse(url)
    db = int((parsed.path or "/0").strip("/") or 0)
    return redis.Redis(host=parsed.hostname or "127.0.0.1", port=parsed.port or 6379, db=db,
                       password=parsed.password, ssl=parsed.scheme == "rediss",
                       socket_connect_timeout=timeout, socket_timeout=timeout)
