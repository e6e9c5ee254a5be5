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


def record_path(project: Project, view: str) -> str:
    """The keys and event times materialization last wrote for ``view``, per online store (switching
    stores starts from nothing): written by ``materialize``, read by the ``data`` ttl clock."""
    import hashlib

    from millrace.contracts.names import NAME

    if not NAME.match(view):  # view names follow the one name rule (features.yaml is checked at load)
        raise ValueError(f"unsafe view name {view!r}")
    store = hashlib.sha256(project.online_store.encode()).hexdigest()[:12]
    return os.path.join(repo_dir(project), "materialized", store, f"{view}.parquet")


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


# -- the materialization marker: a token per view, written into the online store itself --------------
# A store that lost its data (SQLite file deleted, Redis flushed, tables dropped) lost its marker too,
# so materialization knows not to trust its own record of what the store holds.

_SQLITE_MARKER = '"millrace.marker"'  # a dot: no feature view table can have this name


def _marker_key(project: Project) -> str:
    return f"millrace.marker:{project.name}"  # entity hashes start with b"\x01\x00\x00\x00": no clash


def read_marker(project: Project, view: str) -> str | None:
    """The token of the last materialization of ``view`` the store still holds, or None."""
    if online_kind(project) == REDIS:
        client = redis_client(project.online_store)
        try:
            token = client.hget(_marker_key(project), view)
        finally:
            client.close()
        return token.decode() if token else None
    import sqlite3

    path = sqlite_path(project)
    if not os.path.exists(path):
        return None
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "millrace.marker" not in tables or f"{project.name}_{view}" not in tables:
            return None
        row = con.execute(f"SELECT token FROM {_SQLITE_MARKER} WHERE project=? AND view=?",
                          (project.name, view)).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def write_marker(project: Project, view: str, token: str) -> None:
    if online_kind(project) == REDIS:
        client = redis_client(project.online_store)
        try:
            client.hset(_marker_key(project), view, token)
        finally:
            client.close()
        return
    import sqlite3

    con = sqlite3.connect(sqlite_path(project))
    try:
        with con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {_SQLITE_MARKER} (project TEXT, view TEXT, token TEXT, "
                        f"PRIMARY KEY (project, view))")
            con.execute(f"INSERT OR REPLACE INTO {_SQLITE_MARKER} VALUES (?, ?, ?)", (project.name, view, token))
    finally:
        con.close()


def store_id(project: Project) -> str:
    """The online store as a record names it: 'sqlite' or the Redis URL without its password."""
    if online_kind(project) == SQLITE:
        return SQLITE
    parsed = urlparse(project.online_store)
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
